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


def make_tiny_gguf(path, leave_out: tuple[str, ...] = (), declare: dict | None = None) -> None:
    """A 2-layer llama GGUF (float32 tensors) with the embedded model's tokenizer and chat
    template, written with the ``gguf`` package; ``leave_out`` names tensors not written,
    ``declare`` overrides sizes in its metadata (``{"llama.block_count": 3000}``) only."""
    import numpy as np
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    from engine.models import embedded_gguf_path

    hidden, ffn, layers, heads, kv_heads = 64, 128, 2, 4, 2
    sizes = {"llama.block_count": layers, "llama.embedding_length": hidden,
             "llama.feed_forward_length": ffn, "llama.attention.head_count": heads,
             "llama.attention.head_count_kv": kv_heads,
             "llama.rope.dimension_count": hidden // heads}
    declared = {**sizes, **(declare or {})}
    source = GGUFReader(embedded_gguf_path())
    writer = GGUFWriter(str(path), "llama")
    for key, found in source.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key in declared:
            writer.add_key_value(key, declared[key], GGUFValueType.UINT32)
        elif found.types[0] == GGUFValueType.ARRAY:
            writer.add_key_value(key, found.contents(), GGUFValueType.ARRAY,
                                 sub_type=found.types[-1])
        else:
            writer.add_key_value(key, found.contents(), found.types[0])
    rng = np.random.default_rng(0)
    vocab = len(source.fields["tokenizer.ggml.tokens"].contents())

    def weight(*shape: int):
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    head = hidden // heads
    tensors = {"token_embd.weight": weight(vocab, hidden),
               "output_norm.weight": np.ones(hidden, np.float32)}
    for i in range(layers):
        tensors.update({
            f"blk.{i}.attn_norm.weight": np.ones(hidden, np.float32),
            f"blk.{i}.ffn_norm.weight": np.ones(hidden, np.float32),
            f"blk.{i}.attn_q.weight": weight(hidden, hidden),
            f"blk.{i}.attn_k.weight": weight(kv_heads * head, hidden),
            f"blk.{i}.attn_v.weight": weight(kv_heads * head, hidden),
            f"blk.{i}.attn_output.weight": weight(hidden, hidden),
            f"blk.{i}.ffn_gate.weight": weight(ffn, hidden),
            f"blk.{i}.ffn_up.weight": weight(ffn, hidden),
            f"blk.{i}.ffn_down.weight": weight(hidden, ffn)})
    for name, values in tensors.items():
        if name not in leave_out:
            writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
