"""Batch on Ray workers against the serial run, on the 20 demo cases, in one run.

The embedded model explains every demo case (the window's method, no per-token matrix) three
ways: in this process (``tokentrace batch``), on one Ray worker and on two (``--workers 1|2``),
each into its own output folder. Reported per way: the start-up (Ray itself, then the workers
loading the model), the batch (first case handed out to last record written), cases per minute
with and without the start-up, and whether the records equal the serial run's (timings aside).
Ray's own cost per case is the one-worker batch time less the serial batch time, per case.

    python -m benchmarks.cluster --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

import engine  # noqa: F401  (offline before transformers)
from benchmarks.report import replace_section
from engine.defaults import DEFAULT_METHOD
from engine.explain import ExplainRequest
from engine.jobs.batch import BatchSettings, record_path, run_batch
from engine.models import ModelRequest, load_model
from engine.record import Explanation

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "resources" / "cases" / "breast_cancer_cases.jsonl"
HEADING = "## Batch on Ray workers against the serial run (demo cases, embedded SmolLM2-135M, CPU)"


def comparable(path: Path) -> dict:
    data = Explanation.load(path).to_dict()
    for key in ("timings", "hardware", "created_at"):
        data.pop(key)
    return data


def agreement(cases, out: Path, reference: Path) -> tuple[int, int, float]:
    """Records identical to the reference's (timings aside), records with the same answer
    token ids, and the largest difference of a sequence score relative to the largest score."""
    identical = same_answer = 0
    worst = 0.0
    for case in cases:
        ours, theirs = (Explanation.load(record_path(folder, case)) for folder in (out, reference))
        identical += comparable(record_path(out, case)) == comparable(record_path(reference, case))
        same_answer += ours.answer.token_ids == theirs.answer.token_ids
        if ours.answer.token_ids == theirs.answer.token_ids:
            a, b = ours.attribution.sequence, theirs.attribution.sequence
            scale = max(abs(x) for x in b) or 1.0
            worst = max(worst, max(abs(x - y) for x, y in zip(a, b, strict=True)) / scale)
    return identical, same_answer, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="put the table in this markdown file")
    parser.add_argument("--answer-tokens", type=int, default=32)
    parser.add_argument("--workers", default="1,2", help="worker counts to run")
    args = parser.parse_args()

    import ray

    from engine.cases import load_cases
    from engine.jobs.cluster import ClusterSettings, RayPool, start_local_ray

    cases = load_cases(CASES)
    template = ExplainRequest("placeholder", method=DEFAULT_METHOD,
                              max_new_tokens=args.answer_tokens, matrix=False)
    rows = []
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as scratch:
        loaded = None
        serial: dict[int, Path] = {}
        for count in sorted({threads, 1}, reverse=True):  # the default, and one thread
            torch.set_num_threads(count)
            started = time.perf_counter()
            loaded = loaded or load_model(ModelRequest("embedded"))
            load_s = time.perf_counter() - started
            serial[count] = Path(scratch) / f"serial-{count}"
            started = time.perf_counter()
            run_batch(BatchSettings(CASES, serial[count], template), loaded)
            rows.append((f"serial, {count} thread{'s' if count > 1 else ''}", 0.0, load_s,
                         time.perf_counter() - started, serial[count]))
        torch.set_num_threads(threads)
        del loaded
        for count in [int(n) for n in args.workers.split(",")]:
            out = Path(scratch) / f"workers-{count}"
            started = time.perf_counter()
            start_local_ray(ray)
            ray_s = time.perf_counter() - started
            started = time.perf_counter()
            with RayPool(ModelRequest("embedded"), ClusterSettings(workers=count)) as pool:
                workers_s = time.perf_counter() - started
                started = time.perf_counter()
                run_batch(BatchSettings(CASES, out, template), pool)
                batch_s = time.perf_counter() - started
                each = pool.threads
            ray.shutdown()
            rows.append((f"{count} Ray worker{'s' if count > 1 else ''}, {each} thread"
                         f"{'s' if each > 1 else ''} each", ray_s, workers_s, batch_s, out))
        compared = []
        for name, ray_s, load_s, batch_s, out in rows:
            against = [agreement(cases, out, serial[k]) for k in sorted(serial, reverse=True)]
            compared.append((name, ray_s, load_s, batch_s, against))

    n = len(cases)
    heads = [f"serial, {k} thread{'s' if k > 1 else ''}" for k in sorted(serial, reverse=True)]
    lines = [
        HEADING, "",
        f"Run {time.strftime('%Y-%m-%d')} with `python -m benchmarks.cluster`; torch "
        f"{torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs. {n} demo cases, "
        f"method {DEFAULT_METHOD}, {args.answer_tokens} answer tokens, no matrix. Each of N "
        "workers gets the CPUs / N torch threads. One run each, one after the other, the "
        "model's GGUF already converted in the cache. Agreement with a serial run: records "
        "identical (timings aside) / same answer tokens / largest sequence-score difference "
        "relative to the largest score.", "",
        "| run | Ray start s | model load s | batch s | cases/min (batch) | cases/min "
        "(with start-up) | " + " | ".join(f"agreement with {h}" for h in heads) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(heads)]
    for name, ray_s, load_s, batch_s, against in compared:
        cells = [f"{i} / {a} / {w:.1e}" for i, a, w in against]
        lines.append(f"| {name} | {ray_s:.1f} | {load_s:.1f} | {batch_s:.1f} | "
                     f"{60 * n / batch_s:.1f} | {60 * n / (ray_s + load_s + batch_s):.1f} | "
                     + " | ".join(cells) + " |")
    serial_s = compared[0][3]
    one = next((r for r in compared if r[0].startswith("1 Ray")), None)
    if one is not None:
        lines += ["", f"Ray's cost per case (one worker, {threads} threads, against the serial "
                      f"run with as many): {(one[3] - serial_s) / n:+.3f} s, "
                      f"{100 * (one[3] / serial_s - 1):+.1f}% of the batch."]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        replace_section(args.out, HEADING, report)


if __name__ == "__main__":
    main()
