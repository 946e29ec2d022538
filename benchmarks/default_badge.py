"""The window's default method, seen through the reliability badge: each candidate on the 20 demo
cases with the window's defaults (up to 64 answer tokens, no per-token matrix), then the check
the window runs after it. The deletion metrics alone are in the "Longer answers" section.

    python -m benchmarks.default_badge --out docs/evaluation.md
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
HEADING = "## The window's default at 64 tokens: the reliability badge"
CANDIDATES = ("ifr", "flashtrace")


def collect(methods: Sequence[str], limit: int | None) -> dict[str, list[dict]]:
    from engine.cases import load_cases
    from engine.explain import ExplainRequest, explain
    from engine.models import ModelRequest, load_model
    from engine.reliability import check_reliability

    loaded = load_model(ModelRequest("embedded", device="cpu"))
    cases = load_cases(ROOT / "resources/cases/breast_cancer_cases.jsonl")[:limit]
    found: dict[str, list[dict]] = {method: [] for method in methods}
    for number, case in enumerate(cases, 1):
        for method in methods:
            record = explain(ExplainRequest(case.text, method=method, matrix=False), loaded)
            check = check_reliability(loaded.model, loaded.tokenizer, record)
            found[method].append({
                "verdict": check.verdict, "rho": check.rank_correlation,
                "comp": check.comprehensiveness - check.random_comprehensiveness,
                "suff": check.random_sufficiency - check.sufficiency, "draws": max(check.draws),
                "explain_s": record.timings.generate_s + record.timings.attribute_s,
                "check_s": check.seconds})
        print(f"{number}/{len(cases)} {case.id}: " + ", ".join(
            f"{method} {found[method][-1]['verdict']}" for method in methods), flush=True)
    return found


def report(found: dict[str, list[dict]], minutes: float) -> str:
    first, *others = found
    cases = len(found[first])
    lines = [
        HEADING, "",
        f"Run {datetime.now(UTC):%Y-%m-%d} with `python -m benchmarks.default_badge` "
        f"({minutes:.0f} min); torch {torch.__version__}, {platform.machine()} CPU, "
        f"{torch.get_num_threads()} threads. {cases} demo cases, the window's defaults (up to "
        "64 answer tokens, no per-token matrix), each explanation followed by the reliability "
        "check as the window runs it (second opinion: input x gradient for both). Margins over "
        "chance's AOPC (higher is better for both): the explanation's comprehensiveness less "
        "chance's, and chance's sufficiency less the explanation's.", "",
        "| method | strong | fair | weak | rank correlation | compr. margin | suff. margin | "
        "close calls | explain s | check s |", "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, rows in found.items():
        verdicts = [row["verdict"] for row in rows]

        def mean(key: str, rows: list[dict] = rows) -> float:
            return statistics.mean(row[key] for row in rows)

        lines.append(
            f"| {method} | {verdicts.count('strong')} | {verdicts.count('fair')} | "
            f"{verdicts.count('weak')} | {mean('rho'):.2f} | {mean('comp'):.3f} | "
            f"{mean('suff'):.3f} | {sum(row['draws'] > 2 for row in rows)} | "
            f"{statistics.median(r['explain_s'] for r in rows):.1f} | "
            f"{statistics.median(r['check_s'] for r in rows):.1f} |")
    for other in others:
        pairs = list(zip(found[first], found[other], strict=True))
        lines += ["", f"Paired per case, {other} against {first}: higher rank correlation on "
                  f"{sum(b['rho'] > a['rho'] for a, b in pairs)} of {cases}, a larger "
                  f"comprehensiveness margin on {sum(b['comp'] > a['comp'] for a, b in pairs)}, "
                  f"a larger sufficiency margin on {sum(b['suff'] > a['suff'] for a, b in pairs)}"
                  ". Explain and check times are medians."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs/evaluation.md")
    parser.add_argument("--cases", type=int, default=None, help="only the first N demo cases")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    found = collect(CANDIDATES, args.cases)
    text = report(found, (time.perf_counter() - start) / 60)
    print(text)
    replace_section(args.out, HEADING, text)


if __name__ == "__main__":
    main()
