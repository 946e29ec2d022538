"""Single-pass attribution against its peers, in FlashTrace's own format: seconds and peak RSS
against prompt length at a fixed answer length, with comprehensiveness and sufficiency on the
same ids, so that speed and faithfulness are read together.

Embedded SmolLM2-135M on this machine's CPU. Prompts are the window's chat template around a case
made of the demo cases one after another, cut to about 250 ... 8,000 tokens; the answer is the
same 16 forced tokens at every length. Rows: TokenTrace's flashtrace, ifr, input-x-gradient and
converged IG; the ``flashtrace`` package (its low-memory ``recompute_attention`` path, given the
same ids as text: the script checks that it tokenizes them back to the same ids) and Captum's
``LayerIntegratedGradients`` (16 steps). Each (method, length) runs in a fresh process, so peak
RSS is its own (model included); a run past ``--limit`` seconds is stopped and reported so.
Comprehensiveness and sufficiency are TokenTrace's own AOPC code (engine.metrics.deletion_aopc)
over the case tokens, computed after the timed run, up to ``--metrics-up-to`` tokens.

    python -m benchmarks.single_pass --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
from datetime import UTC, datetime
from pathlib import Path
from queue import Empty

import torch

import engine  # noqa: F401  (offline before transformers)
from benchmarks.ig_vs_captum import timed
from benchmarks.report import replace_section

ROOT = Path(__file__).resolve().parent.parent
LENGTHS = (250, 500, 1000, 2000, 4000, 8000)
ANSWER = ("Neoadjuvant chemotherapy with carboplatin and pembrolizumab, then surgery, and "
          "genetic testing for BRCA.")
ANSWER_TOKENS = 16
PEERS = ("flashtrace (package)", "captum ig (16 steps)")
AFTER_GENERATION = "flashtrace, after generating the answer (its cache reused)"
OURS = (("flashtrace", {}), (AFTER_GENERATION, {}), ("ifr", {}), ("input-x-gradient", {}),
        ("ig", {"matrix": False}))
HEADING = "## Single-pass attribution against prompt length (embedded SmolLM2-135M, CPU)"


def long_case(tokenizer, target: int) -> str:
    """The demo cases one after another, cut at a sentence so the prompt has about ``target``
    tokens (template included)."""
    from engine.prompting import DEFAULT_SYSTEM_PROMPT, build_prompt

    cases = [json.loads(line)["text"] for line in
             (ROOT / "resources/cases/breast_cancer_cases.jsonl").read_text().splitlines()
             if line.strip()]
    sentences = [s.strip() + "." for case in cases for s in case.split(".") if s.strip()]
    text, index = "", 0
    while True:
        candidate = (text + " " + sentences[index % len(sentences)]).strip()
        n = len(build_prompt(tokenizer, candidate, system_prompt=DEFAULT_SYSTEM_PROMPT).token_ids)
        if n > target and text:
            return text
        text, index = candidate, index + 1


def _problem(length: int):
    from engine.methods import AttributionInput
    from engine.models import ModelRequest, load_model
    from engine.prompting import DEFAULT_SYSTEM_PROMPT, build_prompt

    loaded = load_model(ModelRequest("embedded", device="cpu"))
    tokenizer = loaded.tokenizer
    prompt = build_prompt(tokenizer, long_case(tokenizer, length),
                          system_prompt=DEFAULT_SYSTEM_PROMPT)
    answer = tokenizer.encode(ANSWER, add_special_tokens=False)[:ANSWER_TOKENS]
    problem = AttributionInput(torch.tensor(prompt.token_ids), torch.tensor(prompt.attributable),
                               torch.tensor(answer))
    return loaded, prompt, problem


def _run(method: str, settings: dict, loaded, prompt, problem) -> torch.Tensor:
    model, tokenizer = loaded.model, loaded.tokenizer
    if method == "flashtrace (package)":
        from flashtrace import FlashTrace

        text = tokenizer.decode(problem.answer_ids.tolist())
        ids = tokenizer(prompt.text, add_special_tokens=False).input_ids
        if ids != list(prompt.token_ids):
            raise RuntimeError("the package would tokenize the prompt to other ids")
        trace = FlashTrace(model, tokenizer, recompute_attention=True)
        return torch.tensor(trace.trace(prompt=prompt.text, target=text).scores,
                            dtype=torch.float64)
    if method == "captum ig (16 steps)":
        from benchmarks.peers import captum_ig
        from engine.methods.base import parse_baseline

        baseline = parse_baseline("pad", tokenizer, model.get_input_embeddings().num_embeddings)
        return captum_ig(model, tokenizer, problem.prompt_ids, problem.attributable,
                         problem.answer_ids, baseline, 16)[0]
    from engine.methods import METHODS

    spec = METHODS[method]
    out = spec.run(model, tokenizer, problem, **{**spec.defaults(), **settings})
    return out.sequence


def _measure(method: str, settings: dict, length: int, metrics_up_to: int) -> dict:
    from dataclasses import replace

    from engine.generation import generate_with_cache
    from engine.metrics import deletion_aopc
    from engine.task import TaskState

    loaded, prompt, problem = _problem(length)
    if method == AFTER_GENERATION:  # as explain runs it: the answer generated, then attributed
        answer, cache = generate_with_cache(loaded.model, loaded.tokenizer,
                                            list(prompt.token_ids), ANSWER_TOKENS, TaskState())
        problem = replace(problem, answer_ids=torch.tensor(answer), prompt_cache=cache)
        method = "flashtrace"
    scores, seconds, peak = timed(lambda: _run(method, settings, loaded, prompt, problem),
                                  loaded.device)
    result = {"seconds": seconds, "peak_rss_mb": peak.peak_rss_mb,
              "n": len(problem.prompt_ids), "T": len(problem.answer_ids)}
    if len(problem.prompt_ids) <= metrics_up_to:
        scores = torch.where(problem.attributable, scores, torch.zeros_like(scores))
        (comp, suff), = deletion_aopc(loaded.model, problem, [scores])
        result.update(comprehensiveness=comp, sufficiency=suff)
    return result


def _child(queue, *args) -> None:
    try:
        queue.put(_measure(*args))
    except Exception as exc:  # reported in the table, not a crash of the whole run
        queue.put({"failed": f"{type(exc).__name__}: {exc}"})


def _in_fresh_process(limit_s: float, *args) -> dict | None:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, *args))
    process.start()
    try:
        return queue.get(timeout=limit_s)
    except Empty:
        return None
    finally:
        process.terminate()
        process.join()


def _cell(result: dict | None, limit: float) -> str:
    if result is None:
        return f"> {limit:.0f} s (stopped)"
    if "failed" in result:
        return "failed: " + result["failed"][:60]
    text = f"{result['seconds']:.1f} s, {result['peak_rss_mb']:,.0f} MiB"
    if "comprehensiveness" in result:
        text += f"; {result['comprehensiveness']:.3f} / {result['sufficiency']:.3f}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="put the table in this markdown file")
    parser.add_argument("--lengths", type=int, nargs="*", default=list(LENGTHS))
    parser.add_argument("--limit", type=float, default=600,
                        help="stop a run after this many seconds (default: 600)")
    parser.add_argument("--metrics-up-to", type=int, default=2000,
                        help="compute comprehensiveness and sufficiency up to this many prompt "
                             "tokens (default: 2000)")
    parser.add_argument("--captum-up-to", type=int, default=250,
                        help="run Captum's IG up to this many prompt tokens (default: 250)")
    parser.add_argument("--ig-up-to", type=int, default=2000,
                        help="run converged IG up to this many prompt tokens (default: 2000)")
    args = parser.parse_args()
    runs = [*OURS, (PEERS[0], {}), (PEERS[1], {})]
    table: dict[str, list[str]] = {}
    sizes: dict[int, int] = {}  # target length -> real prompt tokens
    for length in args.lengths:
        for method, settings in runs:
            label = method + ("" if method != "ig" else " (converged)")
            skip = ((method == PEERS[1] and length > args.captum_up_to)
                    or (method == "ig" and length > args.ig_up_to))
            if skip:
                table.setdefault(label, []).append("not run (cost)")
                continue
            result = _in_fresh_process(args.limit, method, settings, length, args.metrics_up_to)
            table.setdefault(label, []).append(_cell(result, args.limit))
            if result and "n" in result:
                sizes.setdefault(length, result["n"])
            print(f"{length:>5} {label:<24} {table[label][-1]}", flush=True)
    header = "| method | " + " | ".join(f"{sizes.get(length, length):,} tokens"
                                       for length in args.lengths) + " |"
    lines = [
        HEADING, "",
        f"Run {datetime.now(UTC):%Y-%m-%d} with `python -m benchmarks.single_pass` (in `make "
        f"bench`); torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} "
        f"threads, CPU, float32. {ANSWER_TOKENS} forced answer tokens at every length; each cell "
        "is one run in a fresh process: seconds, peak RSS (model included); then "
        "comprehensiveness (higher is better) / sufficiency (lower is better), AOPC over the "
        "case tokens with TokenTrace's metric code, where computed.", "",
        header, "|---|" + "---|" * len(args.lengths),
        *(f"| {label} | " + " | ".join(cells) + " |" for label, cells in table.items()), ""]
    report = "\n".join(lines)
    print(report)
    if args.out:
        replace_section(args.out, HEADING, report)


if __name__ == "__main__":
    main()
