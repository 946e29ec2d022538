"""``tokentrace evaluate``: faithfulness of several methods over a case file, resumably.

Writes the JSON (``summary[method][metric]`` means, ``spread`` standard deviations, every
per-case result), the CSV (one row per method), and a PNG of the pi-Soft-NS / pi-Soft-NC curves.
Each finished (case, method) is appended to ``<json>.progress.jsonl``; a rerun of the same
command skips what is there (when the model and settings match) and goes on.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.cases import load_cases
from engine.errors import Cancelled, InvalidSettingsError, TokenTraceError
from engine.evaluation import RANDOM, CaseResult, EvaluationSettings, evaluate_case, summarise
from engine.metrics import HIGHER_IS_BETTER, METRICS, MetricSettings
from engine.record import write_text_atomic
from engine.task import TaskState

LABELS = {"log_odds": "log-odds", "comprehensiveness": "compr.", "sufficiency": "suff.",
          "soft_nc": "Soft-NC", "soft_ns": "Soft-NS", "pi_soft_nc": "pi-Soft-NC",
          "pi_soft_ns": "pi-Soft-NS"}
COLOURS = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d",
           "#1f78b4", "#b2182b", "#666666"]


def parse_method_options(pairs: list[tuple[str, str]]) -> dict[str, dict[str, str]]:
    """``method.key=value`` pairs, as parsed by the CLI, grouped by method."""
    options: dict[str, dict[str, str]] = {}
    for key, value in pairs:
        method, dot, name = key.partition(".")
        if not dot or not name:
            raise InvalidSettingsError(
                f"evaluate options name their method: METHOD.KEY=VALUE (got {key}={value})")
        options.setdefault(method, {})[name.replace("-", "_")] = value
    return options


def fingerprint(model_sha: str, settings: EvaluationSettings, method: str) -> str:
    """What a stored result depends on: model, answer length, prompt, metrics, method settings
    (not the batch size, which changes no result)."""
    params = {} if method == RANDOM else settings.method_params(method)
    params.pop("batch_size", None)
    text = json.dumps([model_sha, settings.max_new_tokens, settings.system_prompt,
                       settings.baseline, repr(settings.metrics), method, params],
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _load_progress(path: Path) -> dict[tuple[str, str, str], CaseResult]:
    done: dict[tuple[str, str, str], CaseResult] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            data = json.loads(line)
            result = CaseResult.from_dict(data)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by an interruption
        done[(data.get("fingerprint", ""), result.case, result.method)] = result
    return done


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


def write_plot(path: Path, curves: dict[str, dict[str, dict[float, float]]]) -> None:
    """Two panels (pi-Soft-NS, pi-Soft-NC against pi), one line per method, as a PNG."""
    from PySide6.QtCore import QPointF, QRectF, Qt
    from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPen

    from desktop.report import _font_family, ensure_gui_application

    ensure_gui_application()
    width, height = 1400, 620
    image = QImage(width, height, QImage.Format.Format_ARGB32)
    image.fill(QColor("white"))
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setFont(QFont(_font_family(), 11))
    methods = list(curves)
    for panel, (name, title) in enumerate((("pi_soft_ns", "pi-Soft-NS (higher is better)"),
                                           ("pi_soft_nc", "pi-Soft-NC (higher is better)"))):
        left, top = 80 + panel * 680, 50
        box = QRectF(left, top, 560, 460)
        painter.setPen(QPen(QColor("#333333"), 1))
        painter.drawRect(box)
        painter.drawText(QRectF(left, 10, 560, 30), Qt.AlignmentFlag.AlignCenter, title)
        for tick in range(6):
            y = box.bottom() - tick / 5 * box.height()
            painter.drawText(QRectF(left - 60, y - 10, 50, 20), Qt.AlignmentFlag.AlignRight,
                             f"{tick / 5:.1f}")
        for tick in range(1, 10):
            x = box.left() + (tick / 10 - 0.1) / 0.8 * box.width()
            painter.drawText(QRectF(x - 20, box.bottom() + 5, 40, 20),
                             Qt.AlignmentFlag.AlignCenter, f"{tick / 10:.1f}")
        painter.drawText(QRectF(left, box.bottom() + 28, 560, 20), Qt.AlignmentFlag.AlignCenter,
                         "pi (share of the case kept or dropped)")
        for index, method in enumerate(methods):
            points = sorted(curves[method].get(name, {}).items())
            if not points:
                continue
            colour = QColor(COLOURS[index % len(COLOURS)])
            pen = QPen(colour, 2.5, Qt.PenStyle.DashLine if method == RANDOM
                       else Qt.PenStyle.SolidLine)
            painter.setPen(pen)
            mapped = [QPointF(box.left() + (pi - 0.1) / 0.8 * box.width(),
                              box.bottom() - max(0.0, min(1.0, v)) * box.height())
                      for pi, v in points]
            for a, b in itertools.pairwise(mapped):
                painter.drawLine(a, b)
    x = 80.0
    for index, method in enumerate(methods):  # legend, each entry as wide as its name
        width = painter.fontMetrics().horizontalAdvance(method)
        painter.setPen(QPen(QColor(COLOURS[index % len(COLOURS)]), 4))
        painter.drawLine(QPointF(x, 585), QPointF(x + 30, 585))
        painter.setPen(QColor("#222222"))
        painter.drawText(QRectF(x + 36, 575, width + 4, 20), Qt.AlignmentFlag.AlignLeft, method)
        x += 36 + width + 30
    painter.end()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(path), "PNG"):
        raise TokenTraceError(f"cannot write the plot {path}")


def render_summary(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Faithfulness (mean ± standard deviation over cases)")
    table.add_column("method")
    table.add_column("cases", justify="right")
    table.add_column("s/case", justify="right")
    for metric in METRICS:
        arrow = "↑" if HIGHER_IS_BETTER[metric] else "↓"
        table.add_column(f"{LABELS[metric]} {arrow}", justify="right")
    summary = report["summary"]
    best = best_methods(summary)
    for method, values in summary.items():
        cells = []
        for metric in METRICS:
            if metric not in values:
                cells.append("")
                continue
            text = f"{values[metric]:.3f} ± {report['spread'][method][metric]:.3f}"
            cells.append(f"[bold]{text}[/bold]" if best.get(metric) == method else text)
        table.add_row(method, str(report["cases"][method]),
                      f"{report['seconds'][method]:.1f}", *cells)
    Console().print(table)


def main_evaluate(args, state: TaskState) -> int:
    from engine.models import ModelRequest, load_model

    if args.json is None and args.csv is None:
        raise InvalidSettingsError("give --json OUT and/or --csv OUT: the results (and the "
                                   "progress that a rerun resumes from) are written there")
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    settings = EvaluationSettings(
        methods=methods, options=parse_method_options(args.option),
        max_new_tokens=args.max_new_tokens, baseline=args.baseline,
        system_prompt=args.system_prompt,
        metrics=MetricSettings(samples=args.samples, seed=args.seed,
                               granularity=args.granularity, soft=not args.no_soft))
    settings.validate()
    cases = load_cases(args.cases)[: args.limit]
    main_out = args.json or args.csv
    progress_path = main_out.with_name(main_out.name + ".progress.jsonl")
    plot_path = args.plot or main_out.with_name(main_out.stem + "-pi-curves.png")
    loaded = load_model(ModelRequest(args.model, args.device, args.dtype), state)
    keys = {m: fingerprint(loaded.info.sha256, settings, m) for m in methods}
    stored = _load_progress(progress_path)
    results: list[CaseResult] = []
    failures: list[dict[str, str]] = []
    progress_path.parent.mkdir(parents=True, exist_ok=True)
    with progress_path.open("a", encoding="utf-8") as log:
        def keep(result: CaseResult) -> None:
            results.append(result)
            log.write(json.dumps({**result.to_dict(), "fingerprint": keys[result.method]})
                      + "\n")
            log.flush()

        try:
            for number, case in enumerate(cases):
                state.progressed("cases", number, len(cases))
                done = [m for m in methods if (keys[m], case.id, m) in stored]
                results += [stored[(keys[m], case.id, m)] for m in done]
                try:
                    evaluate_case(loaded, case, settings, skip=done, state=state,
                                  on_result=keep)
                except (Cancelled, KeyboardInterrupt):
                    raise
                except TokenTraceError as exc:
                    failures.append({"case": case.id, "reason": str(exc)})
                    print(f"tokentrace: case {case.id} skipped: {exc}", file=sys.stderr)
            state.progressed("cases", len(cases), len(cases))
        except (KeyboardInterrupt, Cancelled):
            print(f"tokentrace: evaluation stopped; finished results are in {progress_path}. "
                  "Run the same command again to resume.", file=sys.stderr)
            return 130
    report = {"created_at": datetime.now(UTC).isoformat(), "model": {
        "name": loaded.info.name, "sha256": loaded.info.sha256, "device": loaded.info.device,
        "dtype": loaded.info.dtype},
        "cases_file": str(args.cases), "settings": {
            "methods": list(methods), "options": settings.options,
            "max_new_tokens": settings.max_new_tokens, "baseline": settings.baseline,
            "samples": settings.metrics.samples, "seed": settings.metrics.seed,
            "granularity": settings.metrics.granularity,
            "percents": list(settings.metrics.percents), "pis": list(settings.metrics.pis)},
        **summarise(results), "failures": failures,
        "results": [r.to_dict() for r in results]}
    report["curves"] = {m: {k: {str(pi): v for pi, v in c.items()} for k, c in cs.items()}
                        for m, cs in report["curves"].items()}
    if args.json:
        write_text_atomic(args.json, json.dumps(report, indent=1))
    if args.csv:
        write_csv(args.csv, report)
    if args.markdown:
        write_text_atomic(args.markdown, markdown_table(report))
    if not args.no_soft:
        write_plot(plot_path, summarise(results)["curves"])
    if not args.quiet:
        render_summary(report)
    written = [str(p) for p in (args.json, args.csv, args.markdown) if p] + \
        ([] if args.no_soft else [str(plot_path)])
    print(f"{len(cases) - len(failures)} cases, {len(methods)} methods; wrote "
          f"{', '.join(written)}")
    return 0
