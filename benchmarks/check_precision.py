"""The reliability check in the model's float32 and in its bfloat16 twin, side by side on the 20
demo cases: the same explanation (the window's defaults), the same random rankings, the check as
the window runs it (a second pair on a close call). Does the rounding change a verdict, how far
does it move the figures, how much time does it save?

    python -m benchmarks.check_precision --out docs/evaluation.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch

import engine  # noqa: F401  (offline before transformers)
from benchmarks.report import replace_section

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Reliability check: float32 or a bfloat16 twin"
# The second method runs on the model itself either way, so its rank correlation is the same.
FIGURES = ("comprehensiveness", "random_comprehensiveness", "sufficiency", "random_sufficiency")


def _draws(row: dict) -> str:
    """The rankings behind chance's comprehensiveness and sufficiency, as "4" or "4 / 2"."""
    return " / ".join(map(str, dict.fromkeys(row["draws"])))


def collect(limit: int | None) -> tuple[list[dict], float]:
    from engine.cases import load_cases
    from engine.explain import ExplainRequest, explain
    from engine.models import ModelRequest, load_model
    from engine.precision import TWIN, bfloat16_twin, native_bfloat16
    from engine.reliability import check_reliability

    if not native_bfloat16():
        raise SystemExit("this CPU has no native bfloat16 (AMX or AVX-512 BF16): the check "
                         "runs in float32 here, and there is nothing to compare")
    loaded = load_model(ModelRequest("embedded", device="cpu"))
    start = time.perf_counter()
    bfloat16_twin(loaded.model)
    twin_s = time.perf_counter() - start
    rows = []
    cases = load_cases(ROOT / "resources/cases/breast_cancer_cases.jsonl")[:limit]
    for number, case in enumerate(cases, 1):
        record = explain(ExplainRequest(case.text, matrix=False), loaded)
        # Alternate which runs first: this machine's speed drifts from minute to minute.
        order = ("model", "auto") if number % 2 else ("auto", "model")
        checks = {precision: check_reliability(loaded.model, loaded.tokenizer, record,
                                               precision=precision) for precision in order}
        if checks["auto"].precision != TWIN:
            raise SystemExit(f"auto ran in {checks['auto'].precision}, not the twin (too little "
                             "free memory?): nothing to compare")
        rows.append({precision: {**{name: getattr(check, name) for name in FIGURES},
                                 "verdict": check.verdict, "draws": check.draws,
                                 "seconds": check.seconds, "precision": check.precision}
                     for precision, check in checks.items()})
        print(f"{number}/{len(cases)} {case.id}: float32 {rows[-1]['model']['verdict']} "
              f"({rows[-1]['model']['seconds']:.1f} s), bfloat16 {rows[-1]['auto']['verdict']} "
              f"({rows[-1]['auto']['seconds']:.1f} s)", flush=True)
    return rows, twin_s


def report(rows: list[dict], twin_s: float, minutes: float) -> str:
    exact = [row["model"] for row in rows]
    rounded = [row["auto"] for row in rows]
    pairs = list(zip(exact, rounded, strict=True))
    same = sum(a["verdict"] == b["verdict"] for a, b in pairs)
    same_draws = [(a, b) for a, b in pairs if a["draws"] == b["draws"]]
    lines = [
        HEADING, "",
        f"Run {datetime.now(UTC):%Y-%m-%d} with `python -m benchmarks.check_precision` "
        f"({minutes:.0f} min); torch {torch.__version__}, {platform.machine()} CPU with native "
        f"bfloat16, {torch.get_num_threads()} threads. {len(rows)} demo cases, the window's "
        "defaults (IFR, up to 64 answer tokens); each explanation checked twice with the same "
        "random rankings: the word deletions in the model's float32, and in its bfloat16 twin "
        "(`--check-precision auto`, the default on such a CPU; the second method runs in float32 "
        f"both times). Making the twin took {twin_s:.1f} s, once per model.", "",
        "| | float32 | bfloat16 twin |", "|---|---|---|",
        "| strong / fair / weak | " + " | ".join(
            "/".join(str(sum(r["verdict"] == v for r in side)) for v in ("strong", "fair", "weak"))
            for side in (exact, rounded)) + " |",
        "| close calls (a second pair drawn) | " + " | ".join(
            str(sum(max(r["draws"]) > 2 for r in side)) for side in (exact, rounded)) + " |",
        "| check seconds, median (range) | " + " | ".join(
            f"{statistics.median(r['seconds'] for r in side):.1f} "
            f"({min(r['seconds'] for r in side):.1f} to {max(r['seconds'] for r in side):.1f})"
            for side in (exact, rounded)) + " |",
        "", f"The same verdict on {same} of {len(rows)} cases; the same number of random "
        f"rankings on {len(same_draws)}. The twin's check took "
        f"{statistics.median(b['seconds'] / a['seconds'] for a, b in pairs):.2f} times as long "
        "(median of the per-case ratios). On the cases with the same rankings, how far the "
        "rounding moved each figure:", "",
        "| figure | median abs. difference | largest | median abs. value |",
        "|---|---|---|---|",
    ]
    for name in FIGURES:
        moved = [abs(a[name] - b[name]) for a, b in same_draws]
        lines.append(f"| {name.replace('_', ' ')} | {statistics.median(moved):.4f} | "
                     f"{max(moved):.4f} | "
                     f"{statistics.median(abs(a[name]) for a, _ in same_draws):.4f} |")
    differ = [(number, a, b) for number, (a, b) in enumerate(pairs, 1)
              if a["verdict"] != b["verdict"]]
    if differ:
        lines += ["", "Where the verdicts differ: " + "; ".join(
            f"case {number}, float32 {a['verdict']} with {_draws(a)} rankings, bfloat16 "
            f"{b['verdict']} with {_draws(b)}" for number, a, b in differ) + "."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs/evaluation.md")
    parser.add_argument("--cases", type=int, default=None, help="only the first N demo cases")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows, twin_s = collect(args.cases)
    text = report(rows, twin_s, (time.perf_counter() - start) / 60)
    print(text)
    replace_section(args.out, HEADING, text)


if __name__ == "__main__":
    main()
