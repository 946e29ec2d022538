"""GPU benchmarks: a Qwen2.5-1.5B-shaped model with random weights, TokenTrace beside Captum.

The shape (28 blocks, width 1536, grouped-query attention, 151,936-token vocabulary) is the seed
paper's model; random weights cost the same time and memory as trained ones. bf16 on the GPU.

1. Integrated Gradients, 32 steps, on a 256-token and a 1,024-token case with a 64-token answer:
   TokenTrace's sequence attribution, its per-token matrix, one answer token on its own (what
   the window computes when it is clicked) and Captum's ``LLMGradientAttribution`` in the same
   run, with the largest relative difference from Captum. Then the same in float32 on the
   256-token case with a 16-token answer, where the two must agree closely.
2. Every method on the 256-token case with a 16-token answer (bf16).

Writes the ``## GPU`` section of the report; every other section stays. A machine without CUDA
leaves the section as it is (``--small`` runs the whole script on a tiny model on the CPU, to
check it).

    python -m benchmarks.gpu --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

import engine  # noqa: F401  (offline before transformers)
from benchmarks.peers import captum_ig
from benchmarks.report import replace_section
from engine.hardware import PeakMemory, device_name
from engine.methods import METHODS, AttributionInput
from engine.methods.base import Size, parse_baseline

QWEN_1_5B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                 num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 max_position_embeddings=32768, tie_word_embeddings=True)
TINY = dict(vocab_size=2000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
            tie_word_embeddings=True)
TEMPLATE = 20  # leading prompt tokens that stand for the chat template (not attributable)
STEPS = 32
METHOD_RUNS = [
    ("flashtrace", {}),
    ("ifr", {}),
    ("input-x-gradient", {}),
    ("ig", {"matrix": False}),  # converged (the default)
    ("ig", {"steps": 32, "matrix": False}),
    ("ig", {"steps": 32, "matrix": True}),
    ("dig", {"matrix": False}),
    ("udig", {"matrix": False}),
    ("sig", {"steps": 2, "matrix": False}),
    ("heta", {"samples": 1}),
    ("grad-ellm", {"mode": "paper"}),
    ("grad-ellm", {"mode": "exact", "layers": "all"}),
    ("ca-lig", {"steps": 4, "layers": "every:2"}),
    ("feature-ablation", {}),
    ("shapley", {"samples": 2}),
    ("feature-ablation", {"fused": False}),  # Captum's LLMAttribution default path
]


class StandInTokenizer:
    """What the methods and Captum ask of a tokenizer, for a model with no tokenizer files."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.pad_token_id = vocab_size - 2
        self.eos_token_id = vocab_size - 1
        self.all_special_ids = [self.pad_token_id, self.eos_token_id]
        self.added_tokens_decoder: dict[int, Any] = {}

    def __len__(self) -> int:
        return self.vocab_size

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [f"<{i}>" for i in ids]

    def decode(self, ids: Any, **_: Any) -> str:
        return " ".join(self.convert_ids_to_tokens([int(i) for i in ids]))

    def __call__(self, text: str, **_: Any) -> dict[str, list]:
        """Encode what ``decode`` wrote, with character offsets (Captum reads its labels)."""
        ids, offsets, start = [], [], 0
        for piece in text.split(" "):
            ids.append(int(piece.strip("<>")))
            offsets.append((start, start + len(piece)))
            start += len(piece) + 1
        return {"input_ids": ids, "offset_mapping": offsets}


def make_model(config: dict, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**config))
    return model.to(device, dtype).eval().requires_grad_(False)


def make_problem(n: int, answer: int, vocab: int, device: torch.device) -> AttributionInput:
    generator = torch.Generator().manual_seed(n + answer)
    ids = torch.randint(100, vocab - 100, (n + answer,), generator=generator)
    mask = torch.ones(n, dtype=torch.bool)
    mask[:TEMPLATE] = False
    return AttributionInput(ids[:n].to(device), mask.to(device), ids[n:].to(device))


def timed(fn: Any, device: torch.device) -> tuple[Any, float, float]:
    """(result, seconds, peak accelerator MiB, or RSS on the CPU) of ``fn()``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    with PeakMemory(device) as peak:
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    memory = peak.peak_accelerator_mb if peak.peak_accelerator_mb is not None \
        else peak.peak_rss_mb
    return result, seconds, memory


def relative(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.double() - ref.double()).abs().max() / ref.double().abs().max())


def ig_against_captum(model: Any, tokenizer: Any, device: torch.device, n: int, answer: int,
                      captum_batch: int) -> list[str]:
    from engine.methods import integrated_gradients

    problem = make_problem(n, answer, tokenizer.vocab_size, device)
    baseline = parse_baseline("pad", tokenizer, tokenizer.vocab_size)
    seq, seq_s, seq_mb = timed(lambda: integrated_gradients(
        model, tokenizer, problem, steps=STEPS, matrix=False), device)
    full, full_s, full_mb = timed(lambda: integrated_gradients(
        model, tokenizer, problem, steps=STEPS, matrix=True), device)
    last = answer - 1  # the costliest row: the longest context
    row_problem = AttributionInput(
        torch.cat([problem.prompt_ids, problem.answer_ids[:last]]),
        torch.cat([problem.attributable, torch.zeros(last, dtype=torch.bool, device=device)]),
        problem.answer_ids[last:])
    row, row_s, row_mb = timed(lambda: integrated_gradients(
        model, tokenizer, row_problem, steps=STEPS, matrix=False), device)
    (c_seq, c_matrix), c_s, c_mb = timed(lambda: captum_ig(
        model, tokenizer, problem.prompt_ids, problem.attributable, problem.answer_ids,
        baseline, STEPS, internal_batch_size=captum_batch), device)
    row_diff = relative(row.sequence[:n], c_matrix[last])
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    title = (f"**{dtype}: {n} prompt tokens ({n - TEMPLATE} from the case), {answer} answer "
             f"tokens, {STEPS} steps**")
    print(title, flush=True)
    return [title, "",
            "| what | TokenTrace s | Captum s | speed-up | peak GPU MiB (ours / Captum) | "
            "max relative difference |", "|---|---|---|---|---|---|",
            f"| sequence attribution | {seq_s:.1f} | {c_s:.1f} | {c_s / seq_s:.1f}x | "
            f"{seq_mb:,.0f} / {c_mb:,.0f} | {relative(seq.sequence, c_seq):.1e} |",
            f"| per-token matrix (and sequence) | {full_s:.1f} | {c_s:.1f} | "
            f"{c_s / full_s:.1f}x | {full_mb:,.0f} / {c_mb:,.0f} | "
            f"{relative(full.per_token, c_matrix):.1e} |",
            f"| the last answer token on its own (a click in the window) | {row_s:.2f} | | | "
            f"{row_mb:,.0f} | {row_diff:.1e} |",
            f"| completeness error of the sequence | {100 * seq.completeness_error:.1f}% | | | "
            "| |", ""]


def every_method(model: Any, tokenizer: Any, device: torch.device, n: int, answer: int,
                 limit_s: float) -> list[str]:
    problem = make_problem(n, answer, tokenizer.vocab_size, device)
    rows = [f"**Every method: {n} prompt tokens, {answer} answer tokens**", "",
            "| method (settings) | seconds | passes (cost formula) | peak GPU MiB | "
            "completeness error |", "|---|---|---|---|---|"]
    for name, settings in METHOD_RUNS:
        spec = METHODS[name]
        params = {**spec.defaults(), **settings}
        shown = ", ".join(f"{k}={v}" for k, v in settings.items())
        cost = spec.cost(Size(prompt=len(problem.prompt_ids), case=int(problem.attributable.sum()),
                              answer=answer), params)
        passes = cost.forwards + cost.backwards
        try:
            out, seconds, memory = timed(lambda s=spec, p=params: s.run(
                model, tokenizer, problem, **p), device)
        except Exception as exc:  # a failure is a result too: report it, go on
            rows.append(f"| {name} ({shown}) | failed: {type(exc).__name__}: "
                        f"{str(exc)[:80]} | {passes:,} | | |")
            print(rows[-1], flush=True)
            continue
        error = "" if out.completeness_error is None else f"{100 * out.completeness_error:.1f}%"
        finite = "" if torch.isfinite(out.sequence).all() else " (non-finite!)"
        rows.append(f"| {name} ({shown}) | {seconds:.2f}{finite} | {passes:,} | "
                    f"{memory:,.0f} | {error} |")
        print(rows[-1], flush=True)
        if seconds > limit_s:
            rows.append(f"| (the remaining methods were skipped: past {limit_s:.0f} s) | | | | |")
            break
    return [*rows, ""]


def window_defaults(model: Any, tokenizer: Any, device: torch.device, n: int, answer: int
                    ) -> list[str]:
    """What the window runs by default after the answer: IFR on the whole answer, then the
    reliability check's parts (its perturbed prompts at its levels: the explanation's ranking
    and one antithetic pair of random rankings; its second opinion, input x gradient), each with its
    peak memory against the 8 GB laptop budget (engine/hardware.py)."""
    from engine.defaults import CHECK_PERCENTS
    from engine.hardware import gpu_budget_bytes
    from engine.metrics import deletion_aopc
    from engine.precision import scoring_model
    from engine.reliability import antithetic_rankings

    problem = make_problem(n, answer, tokenizer.vocab_size, device)
    ifr, second = METHODS["ifr"], METHODS["input-x-gradient"]
    out, ifr_s, ifr_mb = timed(lambda: ifr.run(model, tokenizer, problem, **ifr.defaults()),
                               device)
    scores = out.sequence.double().cpu()
    scorer, precision = scoring_model(model, "auto")
    _, prompts_s, prompts_mb = timed(lambda: deletion_aopc(
        scorer, problem, [scores, *antithetic_rankings(scores.shape, 1)], CHECK_PERCENTS), device)
    _, second_s, second_mb = timed(lambda: second.run(
        model, tokenizer, problem, **{**second.defaults(), "matrix": False}), device)
    budget = gpu_budget_bytes() / 2**20
    return [f"**The window's defaults: {n} prompt tokens, {answer} answer tokens (forced)**", "",
            "| step | seconds | peak MiB |", "|---|---|---|",
            f"| IFR on the whole answer (a fresh forward; the window reuses generation's "
            f"cache) | {ifr_s:.2f} | {ifr_mb:,.0f} |",
            f"| the check's {1 + 6 * len(CHECK_PERCENTS)} perturbed prompts ({precision}) | "
            f"{prompts_s:.2f} | "
            f"{prompts_mb:,.0f} |",
            f"| the check's second opinion (input x gradient) | {second_s:.2f} | "
            f"{second_mb:,.0f} |",
            f"| attribution and check together | {ifr_s + prompts_s + second_s:.2f} | "
            f"{max(ifr_mb, prompts_mb, second_mb):,.0f} (budget {budget:,.0f}) |", ""]


def warm_up(model: Any, tokenizer: Any, device: torch.device) -> None:
    """CUDA context, kernels and allocator, outside every measurement."""
    METHODS["ig"].run(model, tokenizer, make_problem(64, 4, tokenizer.vocab_size, device),
                      steps=4, matrix=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the ## GPU section of this report")
    parser.add_argument("--small", action="store_true",
                        help="a tiny model on the CPU: checks the script, measures nothing")
    parser.add_argument("--lengths", default="256,1024",
                        help="case lengths for the IG comparison (default: 256,1024)")
    parser.add_argument("--limit", type=float, default=300,
                        help="skip the remaining methods once one takes this long (seconds)")
    args = parser.parse_args()
    if not args.small and not torch.cuda.is_available():
        print("No CUDA GPU here: the GPU section of the report is left as it is.")
        return
    device = torch.device("cpu" if args.small else "cuda")
    dtype = torch.float32 if args.small else torch.bfloat16
    config = TINY if args.small else QWEN_1_5B
    tokenizer = StandInTokenizer(config["vocab_size"])
    lengths = [int(x) for x in args.lengths.split(",")]
    body: list[str] = []
    model = make_model(config, device, dtype)
    warm_up(model, tokenizer, device)
    body += window_defaults(model, tokenizer, device, lengths[0], 64)
    for n in lengths:
        body += ig_against_captum(model, tokenizer, device, n, 64, captum_batch=8)
    body += every_method(model, tokenizer, device, lengths[0], 16, args.limit)
    if not args.small:
        del model
        torch.cuda.empty_cache()
        model = make_model(config, device, torch.float32)
        warm_up(model, tokenizer, device)
        body += ig_against_captum(model, tokenizer, device, lengths[0], 16, captum_batch=8)
    heading = "## GPU"
    lines = [heading, "",
             f"Run {datetime.now(UTC):%Y-%m-%d} with `python -m benchmarks.gpu` on "
             f"{device_name(device)}; torch {torch.__version__}, {platform.machine()}. A "
             "Qwen2.5-1.5B-shaped model (28 blocks, width 1536, 151,936-token vocabulary) with "
             f"random weights, bf16 unless a table says float32: the same time and memory "
             "as the trained model. TokenTrace and Captum in the same process, one after the "
             "other, on the same ids (the first 20 prompt tokens stand for the chat template "
             "and are not attributed); Captum batches 8 interpolation points per pass. One run "
             "each after a warm-up, not a timed test.", "", *body]
    report = "\n".join(lines)
    print(report)
    if args.out and not args.small:
        replace_section(args.out, heading, report)


if __name__ == "__main__":
    main()
