"""Faithfulness of several methods over a case file, resumably.

Writes the JSON (``summary[method][metric]`` means, ``spread`` standard deviations, every
per-case result), the CSV (one row per method) and a Markdown table, as asked. Each finished
(case, method) is appended to ``<first output>.progress.jsonl``; a rerun with the same model and
settings skips what is there and goes on.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.cases import load_cases
from engine.errors import InvalidSettingsError
from engine.evaluation import RANDOM, CaseResult, EvaluationSettings, summarise
from engine.files import check_distinct, parse_json
from engine.jobs.pool import CasePool, as_pool
from engine.metrics import HIGHER_IS_BETTER, METRICS, MetricSettings
from engine.models import LoadedModel
from engine.record import MAX_SECONDS, ModelInfo, check_writable, write_text_atomic
from engine.task import TaskState

LABELS = {"log_odds": "log-odds", "comprehensiveness": "compr.", "sufficiency": "suff.",
          "soft_nc": "Soft-NC", "soft_ns": "Soft-NS", "pi_soft_nc": "pi-Soft-NC",
          "pi_soft_ns": "pi-Soft-NS"}


@dataclass(frozen=True)
class EvaluateSettings:
    cases_file: Path
    evaluation: EvaluationSettings
    json: Path | None = None
    csv: Path | None = None
    markdown: Path | None = None
    limit: int | None = None  # only the first N cases

    def validate(self) -> None:
        if self.json is None and self.csv is None:
            raise InvalidSettingsError("give --json OUT and/or --csv OUT: the results (and the "
                                       "progress that a rerun resumes from) are written there")
        self.evaluation.validate()
        check_distinct({"case list": self.cases_file},
                       {"results (--json)": self.json, "table (--csv)": self.csv,
                        "summary (--markdown)": self.markdown,
                        "progress file": self.progress_path})
        load_cases(self.cases_file)
        for path in (self.json, self.csv, self.markdown, self.progress_path):
            if path is not None:
                check_writable(path, "evaluation output")

    @property
    def progress_path(self) -> Path:
        main = self.json or self.csv
        assert main is not None
        return main.with_name(main.name + ".progress.jsonl")


def parse_method_options(pairs: list[tuple[str, str]]) -> dict[str, dict[str, str]]:
    """``method.key=value`` pairs grouped by method."""
    options: dict[str, dict[str, str]] = {}
    for key, value in pairs:
        method, dot, name = key.partition(".")
        if not dot or not name:
            raise InvalidSettingsError(
                f"evaluate options name their method: METHOD.KEY=VALUE (got {key}={value})")
        options.setdefault(method, {})[name.replace("-", "_")] = value
    return options


def fingerprint(model: ModelInfo, settings: EvaluationSettings, method: str) -> str:
    """What a stored result depends on besides its case's text: the model's weights,
    tokenizer, chat template, precision and device, the answer length, prompt, metrics and
    method settings (not the batch size, which changes no result)."""
    params = {} if method == RANDOM else settings.method_params(method)
    params.pop("batch_size", None)
    text = json.dumps([model.sha256, model.tokenizer_sha256, model.template_sha256,
                       model.dtype, model.device,
                       settings.max_new_tokens, settings.system_prompt, settings.baseline,
                       repr(settings.metrics), method, params], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


SOFT_METRICS = ("soft_nc", "soft_ns", "pi_soft_nc", "pi_soft_ns")
PROBABILITY_METRICS = ("comprehensiveness", "sufficiency", *SOFT_METRICS)  # in [-1, 1]
MAX_LOG_ODDS = 1e4  # nats: a fall no float32 model gives


def is_whole(result: CaseResult, metrics: MetricSettings) -> bool:
    """Whether a stored result has exactly the figures these settings compute, each within
    its metric's range (a line edited to drop a metric or a curve, or to hold 1e308, would
    otherwise be averaged in, or overflow the summary)."""
    soft = metrics.soft
    expected = {"log_odds", "comprehensiveness", "sufficiency", *(SOFT_METRICS if soft else ())}
    curves = {"pi_soft_nc", "pi_soft_ns"} if soft else set()
    if set(result.values) != expected or set(result.curves) != curves \
            or not 0 <= result.seconds < MAX_SECONDS:
        return False
    if any(set(curve) != set(metrics.pis) or any(abs(v) > 1 for v in curve.values())
           for curve in result.curves.values()):
        return False
    return all(abs(value) <= (1 if name in PROBABILITY_METRICS else MAX_LOG_ODDS)
               for name, value in result.values.items())


def _load_progress(path: Path) -> dict[tuple[str, str, str, str], CaseResult]:
    """(fingerprint, case id, method, case text sha256) -> the stored result."""
    done: dict[tuple[str, str, str, str], CaseResult] = {}
    if not path.is_file():
        return done
    # An edited file may hold bytes that are not UTF-8: those lines fail below, as altered.
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            data = parse_json(line)
            result = CaseResult.from_dict(data)
            key, text_sha = data["fingerprint"], data["case_sha256"]
            if not (isinstance(key, str) and isinstance(text_sha, str)):
                raise TypeError("a fingerprint or case sha256 that is not text")
        except (ValueError, KeyError, TypeError, OverflowError, AttributeError):
            continue  # a line cut short by an interruption, or altered: that case runs again
        done[(key, result.case, result.method, text_sha)] = result
    return done


def run_evaluation(settings: EvaluateSettings, loaded: LoadedModel | CasePool,
                   state: TaskState | None = None,
                   log: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Evaluate every (case, method) not yet done, with ``loaded`` (a model: in this process)
    or a pool, write the outputs and return the report. ``Cancelled`` (or Ctrl-C) keeps every
    finished result in the progress file."""
    state = state or TaskState()
    pool = as_pool(loaded)
    info = pool.info
    evaluation = settings.evaluation
    methods = evaluation.methods
    cases = load_cases(settings.cases_file)[: settings.limit]
    progress_path = settings.progress_path
    keys = {m: fingerprint(info, evaluation, m) for m in methods}
    stored = _load_progress(progress_path)
    results: list[CaseResult] = []
    failures: list[dict[str, str]] = []
    progress_path.parent.mkdir(parents=True, exist_ok=True)
    jobs = []
    text_sha = {case.id: hashlib.sha256(case.text.encode("utf-8")).hexdigest() for case in cases}
    stored = {key: result for key, result in stored.items()
              if is_whole(result, evaluation.metrics)}  # else altered: that case runs again
    for case in cases:
        done = tuple(m for m in methods if (keys[m], case.id, m, text_sha[case.id]) in stored)
        results.extend(stored[(keys[m], case.id, m, text_sha[case.id])] for m in done)
        if len(done) < len(methods):
            jobs.append((case, done))
    finished = len(cases) - len(jobs)
    state.progressed("cases", finished, len(cases))
    with progress_path.open("a", encoding="utf-8") as progress:

        def keep(case_id: str, result: CaseResult) -> None:
            results.append(result)
            progress.write(json.dumps({**result.to_dict(), "case_sha256": text_sha[case_id],
                                       "fingerprint": keys[result.method]}) + "\n")
            progress.flush()

        for case_id, error in pool.evaluate(jobs, evaluation, state, keep):
            if error is not None:
                failures.append({"case": case_id, "reason": str(error)})
                log(f"case {case_id} skipped: {error}")
            finished += 1
            state.progressed("cases", finished, len(cases))
    # In case order, each case's methods in the order asked, however the work was shared out.
    order = {case.id: k for k, case in enumerate(cases)}
    results.sort(key=lambda r: (order[r.case], methods.index(r.method)))
    failures.sort(key=lambda f: order[f["case"]])
    report = {"created_at": datetime.now(UTC).isoformat(), "model": {
        "name": info.name, "sha256": info.sha256, "device": info.device, "dtype": info.dtype},
        "cases_file": str(settings.cases_file), "settings": {
            "methods": list(methods), "options": evaluation.options,
            "max_new_tokens": evaluation.max_new_tokens, "baseline": evaluation.baseline,
            "samples": evaluation.metrics.samples, "seed": evaluation.metrics.seed,
            "granularity": evaluation.metrics.granularity,
            "percents": list(evaluation.metrics.percents), "pis": list(evaluation.metrics.pis)},
        **summarise(results), "failures": failures,
        "results": [r.to_dict() for r in results]}
    curves = report["curves"]
    report["curves"] = {m: {k: {str(pi): v for pi, v in c.items()} for k, c in cs.items()}
                        for m, cs in curves.items()}
    if settings.json:
        write_text_atomic(settings.json, json.dumps(report, indent=1))
    if settings.csv:
        write_csv(settings.csv, report)
    if settings.markdown:
        write_text_atomic(settings.markdown, markdown_table(report))
    report["cases_evaluated"] = len(cases) - len(failures)
    return report


def write_csv(path: Path, report: dict[str, Any]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["method", "cases", "seconds_mean",
                     *[f"{m}_{s}" for m in METRICS for s in ("mean", "std")]])
    for method, values in report["summary"].items():
        spread = report["spread"][method]
        writer.writerow([method, report["cases"][method], f"{report['seconds'][method]:.3f}",
                         *[x for m in METRICS for x in (
                             _number(values.get(m)), _number(spread.get(m)))]])
    write_text_atomic(path, buffer.getvalue())


def best_methods(summary: dict[str, dict[str, float]]) -> dict[str, str]:
    """For each metric, the method with the best mean (highest or lowest, as the metric wants)."""
    best = {}
    for metric in METRICS:
        scored = [(values[metric], method) for method, values in summary.items()
                  if metric in values]
        if scored:
            best[metric] = (max if HIGHER_IS_BETTER[metric] else min)(scored)[1]
    return best


def markdown_table(report: dict[str, Any]) -> str:
    """The summary as a Markdown table: mean ± standard deviation, the best value in bold."""
    summary, spread = report["summary"], report["spread"]
    head = ["method", "cases", "s/case",
            *[f"{LABELS[m]} {'↑' if HIGHER_IS_BETTER[m] else '↓'}" for m in METRICS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = best_methods(summary)
    for method, values in summary.items():
        cells = [method, str(report["cases"][method]), f"{report['seconds'][method]:.1f}"]
        for metric in METRICS:
            if metric not in values:
                cells.append("")
                continue
            text = f"{values[metric]:.3f} ± {spread[method][metric]:.3f}"
            cells.append(f"**{text}**" if best.get(metric) == method else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"
