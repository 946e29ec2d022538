"""Tiny real models and a tiny real tokenizer, built in the test process (no download)."""

from __future__ import annotations

import torch

import engine  # noqa: F401  (offline switches before transformers)

WORDS = [
    'a', 'an', 'the', 'of', 'and', 'or', 'with', 'in', 'on', 'at', 'to', 'for', 'is', 'was',
    'are', 'no', 'not', 'left', 'right', 'breast', 'mass', 'cm', 'tumour', 'tumor', 'grade',
    'ER', 'PR', 'HER2', 'positive', 'negative', 'Ki-67', 'nodes', 'node', 'axillary',
    'biopsy', 'invasive', 'ductal', 'lobular', 'carcinoma', 'DCIS', 'year', 'old', 'woman',
    'man', 'postmenopausal', 'premenopausal', 'BRCA1', 'BRCA2', 'carrier', 'mammogram',
    'ultrasound', 'MRI', 'metastatic', 'recurrence', 'bone', 'liver', 'lung', 'chemotherapy',
    'endocrine', 'therapy', 'surgery', 'mastectomy', 'lumpectomy', 'radiotherapy',
    'trastuzumab', 'tamoxifen', 'letrozole', 'recommend', 'next', 'step', 'answer', 'case',
    'patient', 'presents', 'history', 'family', 'mother', 'sister', '1', '2', '3', '4', '5',
    '10', '20', '30', '40', '45', '50', '55', '60', '65', '52', '70', '75', '80', '%', ',',
    '.', ':', ';', '(', ')', '-', '/', '+', 'system', 'user', 'assistant', 'you', 'are',
    'clinical', 'assistant', 'read',
]
SPECIALS = ["<pad>", "<unk>", "<eos>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> "
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)
CASE = ("52 year old postmenopausal woman , left breast mass 2 cm , invasive ductal carcinoma "
        "grade 2 , ER positive , PR positive , HER2 negative , Ki-67 20 % , 1 axillary node "
        "positive .")


def make_tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + sorted(set(WORDS), key=WORDS.index))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_tiny_model(kind: str, vocab_size: int, dtype: torch.dtype, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, pad_token_id=0, eos_token_id=2,
                  bos_token_id=None, tie_word_embeddings=False)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    # Random init is tiny in scale; widen it so attributions are far from zero.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0) if p.ndim > 1 else None
    return model.to(dtype).eval().requires_grad_(False)


def relative_difference(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - reference| / max |reference|."""
    return float((ours - reference).abs().max() / reference.abs().max())
