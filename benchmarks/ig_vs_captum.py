"""TokenTrace's fused Integrated Gradients against Captum's LLMGradientAttribution.

Same run, same machine, same work: the embedded SmolLM2-135M on the CPU, the demo breast-cancer
case through the chat template, a forced answer of about 20 tokens, 16 Gauss-Legendre steps, the
pad baseline. Reports seconds, peak RSS, agreement, and model load time cold and cached. The
GPU comparison is benchmarks/gpu.py.

    python -m benchmarks.ig_vs_captum --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import torch

import engine  # noqa: F401  (offline before transformers)
from benchmarks.peers import captum_ig
from benchmarks.report import keep_others
from engine.hardware import PeakMemory, device_name
from engine.methods import AttributionInput, integrated_gradients
from engine.methods.base import parse_baseline
from engine.models import ModelRequest, load_model
from engine.prompting import DEFAULT_SYSTEM_PROMPT, build_prompt

ROOT = Path(__file__).resolve().parent.parent
CASE = (ROOT / "resources/cases/demo_case.txt").read_text()
TARGET = ("Neoadjuvant chemotherapy with carboplatin and pembrolizumab, then surgery, and "
          "genetic testing for BRCA.")
STEPS = 16


def timed(fn, device: torch.device):
    with PeakMemory(device) as peak:
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
    return result, seconds, peak


def relative(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


def _cpu_problem():
    loaded = load_model(ModelRequest("embedded", device="cpu"))
    tokenizer = loaded.tokenizer
    prompt = build_prompt(tokenizer, CASE, system_prompt=DEFAULT_SYSTEM_PROMPT)
    answer = tokenizer.encode(TARGET, add_special_tokens=False)
    problem = AttributionInput(torch.tensor(prompt.token_ids), torch.tensor(prompt.attributable),
                               torch.tensor(answer))
    return loaded, problem


def _measure(kind: str) -> dict:
    """One measurement in a fresh process, so peak RSS is this work's and nothing earlier."""
    loaded, problem = _cpu_problem()
    model, tokenizer = loaded.model, loaded.tokenizer
    if kind == "captum":
        baseline_id = parse_baseline("pad", tokenizer, model.get_input_embeddings().num_embeddings)
        (sequence, matrix), seconds, peak = timed(lambda: captum_ig(
            model, tokenizer, problem.prompt_ids, problem.attributable, problem.answer_ids,
            baseline_id, STEPS), loaded.device)
        error = None
    else:
        out, seconds, peak = timed(lambda: integrated_gradients(
            model, tokenizer, problem, steps=STEPS, matrix=kind == "matrix"), loaded.device)
        sequence, matrix, error = out.sequence, out.per_token, out.completeness_error
    return {"seconds": seconds, "peak_rss_mb": peak.peak_rss_mb, "sequence": sequence,
            "matrix": matrix, "completeness_error": error,
            "n": len(problem.prompt_ids), "case_tokens": int(problem.attributable.sum()),
            "T": len(problem.answer_ids), "device": device_name(loaded.device)}


def _in_fresh_process(kind: str) -> dict:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_measure, kind).result()


def cpu_benchmark() -> list[str]:
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TOKENTRACE_CACHE_DIR"] = cache
        cold = load_model(ModelRequest("embedded", device="cpu"))
        warm = load_model(ModelRequest("embedded", device="cpu"))
        seq = _in_fresh_process("sequence")
        full = _in_fresh_process("matrix")
        captum = _in_fresh_process("captum")
    captum_s = captum["seconds"]
    rows.append(f"Work: {seq['n']} prompt tokens ({seq['case_tokens']} from the case), "
                f"{seq['T']} forced answer tokens, {STEPS} steps, pad baseline, float32, on "
                f"{seq['device']}. Each measurement runs in a fresh process (peak RSS is its "
                "own, model included).\n")
    rows.append("| what | TokenTrace | Captum | speed-up | max relative difference |")
    rows.append("|---|---|---|---|---|")
    rows.append(f"| sequence attribution | {seq['seconds']:.1f} s | {captum_s:.1f} s | "
                f"{captum_s / seq['seconds']:.1f}x | "
                f"{relative(seq['sequence'], captum['sequence']):.1e} |")
    rows.append(f"| per-token matrix (and sequence) | {full['seconds']:.1f} s | {captum_s:.1f} s "
                f"| {captum_s / full['seconds']:.1f}x | "
                f"{relative(full['matrix'], captum['matrix']):.1e} |")
    rows.append(f"| peak RSS, sequence / matrix | {seq['peak_rss_mb']:,.0f} / "
                f"{full['peak_rss_mb']:,.0f} MiB | {captum['peak_rss_mb']:,.0f} MiB | | |")
    rows.append(f"| completeness error ({STEPS} steps) | "
                f"{100 * full['completeness_error']:.1f}% | (not reported) | | |")
    rows.append("")
    rows.append("Captum computes the sequence attribution only as the sum of the per-token "
                "matrix, so its one run is the reference for both rows.\n")
    rows.append("| model load (embedded GGUF, CPU) | seconds |")
    rows.append("|---|---|")
    rows.append(f"| cold: dequantize the GGUF and write the cache | {cold.load_s:.1f} |")
    rows.append(f"| cached: read the dequantized safetensors | {warm.load_s:.1f} |")
    rows.append("")
    rows.append("Load times exclude importing torch and transformers (about 5 s here), paid once "
                "per process.")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the markdown report here")
    args = parser.parse_args()
    torch.manual_seed(0)
    lines = ["# Benchmarks", "",
             f"Run {datetime.now(UTC):%Y-%m-%d} with `make bench` (benchmarks/ig_vs_captum.py); "
             f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} "
             "threads. TokenTrace and Captum in the same run, one after the other, on the same "
             "inputs, each in a fresh process. One run each, not a timed test.", "",
             "## Integrated Gradients, embedded SmolLM2-135M on the CPU", "",
             *cpu_benchmark(), "", "Every other method's time and memory on the same case: "
             "docs/benchmarks-methods.md (benchmarks/methods.py). On a GPU: the GPU section "
             "(benchmarks/gpu.py).", ""]
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(keep_others(args.out, report))  # the bundle's section stays


if __name__ == "__main__":
    main()
