"""Every attribution method on the embedded SmolLM2-135M and the demo case, on this machine.

Same case and forced answer as benchmarks/ig_vs_captum.py; each method in a fresh process, so
peak RSS is its own (model included). Feature ablation runs next to Captum's own unfused path
(token-by-token decoding with its KV cache) in the same run. Settings are chosen so the whole
table takes minutes on a laptop CPU; the cost formulas of `tokentrace methods` scale them.

    python -m benchmarks.methods --out docs/benchmarks-methods.md
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
from datetime import UTC, datetime
from pathlib import Path
from queue import Empty

import torch

import engine  # noqa: F401  (offline before transformers)
from benchmarks.ig_vs_captum import _cpu_problem, timed
from engine.methods import METHODS
from engine.methods.base import Size

RUNS = [
    ("ig", {"steps": 32, "matrix": False}),
    ("ig", {"steps": 32, "matrix": True}),
    ("dig", {"matrix": False}),
    ("udig", {"matrix": False}),
    ("udig", {"strategy": "maxcount", "matrix": False}),
    ("sig", {"steps": 2, "matrix": False}),
    ("heta", {"samples": 1}),
    ("grad-ellm", {"mode": "paper"}),
    ("grad-ellm", {"mode": "exact", "layers": "all"}),
    ("ca-lig", {"steps": 4, "layers": "every:2"}),
    ("feature-ablation", {"fused": True}),
    ("feature-ablation", {"fused": False}),
]


def _measure(name: str, settings: dict) -> dict:
    loaded, problem = _cpu_problem()
    spec = METHODS[name]
    params = {**spec.defaults(), **settings}
    out, seconds, peak = timed(lambda: spec.run(loaded.model, loaded.tokenizer, problem,
                                                **params), loaded.device)
    scores = torch.where(problem.attributable, out.sequence, torch.zeros_like(out.sequence))
    top = scores.abs().topk(3).indices.tolist()
    words = [repr(loaded.tokenizer.decode([int(problem.prompt_ids[i])])) for i in top]
    cost = spec.cost(Size(prompt=len(problem.prompt_ids), case=int(problem.attributable.sum()),
                          answer=len(problem.answer_ids)), params)
    return {"seconds": seconds, "peak_rss_mb": peak.peak_rss_mb,
            "error": out.completeness_error, "top": words,
            "passes": cost.forwards + cost.backwards,
            "finite": bool(torch.isfinite(out.sequence).all()),
            "n": len(problem.prompt_ids), "case_tokens": int(problem.attributable.sum()),
            "T": len(problem.answer_ids)}


def _child(queue, name: str, settings: dict) -> None:
    queue.put(_measure(name, settings))


def _in_fresh_process(name: str, settings: dict, limit_s: float) -> dict | None:
    """``_measure`` in a new process; None when it runs past ``limit_s`` (then stopped)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, name, settings))
    process.start()
    try:
        return queue.get(timeout=limit_s)
    except Empty:
        return None
    finally:
        process.terminate()
        process.join()


def _label(name: str, settings: dict) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in settings.items())
    if name == "feature-ablation" and not settings.get("fused", True):
        shown += " (Captum's default path)"
    return f"{name} ({shown})" if shown else name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the markdown report here")
    parser.add_argument("--only", nargs="*", help="method names to run (default: all)")
    parser.add_argument("--limit", type=float, default=900,
                        help="stop a run after this many seconds (default: 900)")
    args = parser.parse_args()
    rows = ["| method (settings) | seconds | passes (cost formula) | peak RSS MiB | "
            "completeness error | top 3 case tokens |", "|---|---|---|---|---|---|"]
    first = None
    for name, settings in RUNS:
        if args.only and name not in args.only:
            continue
        result = _in_fresh_process(name, settings, args.limit)
        if result is None:
            rows.append(f"| {_label(name, settings)} | > {args.limit:.0f} (stopped) | | | | |")
            print(rows[-1], flush=True)
            continue
        first = first or result
        error = "" if result["error"] is None else f"{100 * result['error']:.1f}%"
        rows.append(f"| {_label(name, settings)} | {result['seconds']:.1f} | "
                    f"{result['passes']:,} | {result['peak_rss_mb']:,.0f} | {error} | "
                    f"{', '.join(result['top'])} |")
        print(rows[-1], flush=True)
    assert first is not None, "no method ran"
    lines = [
        "# Benchmarks: every method", "",
        f"Run {datetime.now(UTC):%Y-%m-%d} with `make bench` (benchmarks/methods.py); torch "
        f"{torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, CPU. "
        f"Embedded SmolLM2-135M (float32), the demo case: {first['n']} prompt tokens "
        f"({first['case_tokens']} from the case), {first['T']} forced answer tokens. Each row "
        "is one run in a fresh process. `passes` is the method's own cost estimate "
        "(forwards + backwards over n + T - 1 tokens, n counted as case tokens).", "",
        *rows, ""]
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


if __name__ == "__main__":
    main()
