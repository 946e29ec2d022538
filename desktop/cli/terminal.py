"""The terminal with rich: an explanation (from its presentation model), progress bars, the
method list and an evaluation's summary."""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.color import Color
from rich.console import Console
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.segment import Segment
from rich.style import Style
from rich.table import Table
from rich.text import Text

from desktop.cli.text import printable
from desktop.present import (
    UNCOLOURED_BELOW,
    ExplanationView,
    claim_views,
    evidence_words,
    likelihood_change,
    whatif_view,
)
from engine.jobs.evaluate import LABELS, best_methods
from engine.metrics import HIGHER_IS_BETTER, METRICS
from engine.record import Explanation
from engine.task import STAGES, TaskState


class SafeConsole(Console):
    """A rich console that prints no control character from the data it shows (a case, an
    answer, a folder's name): only rich's own styles and cursor moves reach the terminal. Text
    is never read as rich's markup, emoji codes or highlighting: "[name redacted]" or
    "[link=...]" in a case is printed as written (styles here are given as Text styles)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.update(markup=False, emoji=False, highlight=False)
        super().__init__(*args, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        # Rich drops a form feed, a carriage return or a bell from text silently ("HER2
        # negative\fER positive" read "HER2 negativeER positive"); shown as U+FFFD instead.
        return super().render_str(printable(text), **kwargs)

    def on_broken_pipe(self) -> None:
        """The reader went away (``| head -1``): the rest of the output is dropped, and the run
        goes on and ends with its own exit code. Rich's default exits 1 without a word, after
        the record was saved, so a script read a saved run as failed."""
        self.quiet = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)

    def _render_buffer(self, buffer: Any) -> str:
        return super()._render_buffer(
            segment if segment.control else Segment(printable(segment.text), segment.style)
            for segment in buffer)


class RichTaskState(TaskState):
    """Progress bars on stderr for each stage; nothing printed with ``quiet``."""

    def __init__(self, quiet: bool = False) -> None:
        super().__init__()
        console = SafeConsole(stderr=True)
        # Off when stderr is not a terminal: a log gets the error line and nothing else.
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
            console=console, transient=True, disable=quiet or not console.is_terminal)
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> RichTaskState:
        if not self._progress.disable:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._progress.disable:
            self._progress.stop()

    def progressed(self, stage: str, done: int, total: int) -> None:
        if stage not in self._tasks:
            self._tasks[stage] = self._progress.add_task(STAGES.get(stage, stage), total=total)
        self._progress.update(self._tasks[stage], completed=done, total=total)


def _styled(background, ink) -> Style:
    r, g, b = background
    return Style(bgcolor=Color.from_rgb(r, g, b), color=ink)


def coloured_case(view: ExplanationView) -> Text:
    """The case text with each word's background coloured by its attribution."""
    text = Text()
    for piece in view.pieces:
        if piece.background is None:
            text.append(printable(piece.text))
        else:
            text.append(printable(piece.text), _styled(piece.background, piece.ink))
    return text


def render_explanation(record: Explanation, top: int = 10, console: Console | None = None
                       ) -> None:
    console = console or SafeConsole()
    view = ExplanationView.from_record(record, top=top, steps_flag="--steps")
    console.print(Text.assemble(("TokenTrace", "bold"), f" · {view.heading}"))
    console.print(Panel(view.answer or "(empty)", title=view.answer_title, title_align="left"))
    console.print(Panel(coloured_case(view), title="Case, coloured by attribution",
                        title_align="left"))
    legend = Text("  scale ")
    for step in view.legend:
        legend.append(f" {step.value:+.3g} ", _styled(step.background, step.ink))
    legend.append(f"   {view.legend_words} · under {UNCOLOURED_BELOW:.0%} of the scale: "
                  "uncoloured")
    console.print(legend)

    table = Table(title=f"{len(view.top_words)} most influential words", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("word")
    table.add_column("attribution", justify="right")
    table.add_column("share", justify="right")
    for word in view.top_words:
        table.add_row(str(word.rank), word.text, f"{word.score:+.4f}", f"{100 * word.share:.1f}%")
    console.print(table)

    if view.fields:
        fields = Table(title="Attribution per clinical field", title_justify="left")
        fields.add_column("field")
        fields.add_column("attribution", justify="right")
        fields.add_column("share", justify="right")
        for field in view.fields:
            fields.add_row(field.label, f"{field.score:+.4f}", f"{100 * field.share:.0f}%")
        console.print(fields)
    if record.attribution.per_token is not None:
        console.print(per_answer_token_table(view))

    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    error = record.attribution.completeness_error
    facts.add_row("Completeness error", view.completeness if error is None else
                  f"{100 * error:.2f}% of F(case) - F(baseline){view.completeness_hint}")
    facts.add_row("Method", f"{record.method.name} ({view.parameters})")
    facts.add_row("Tokens", view.tokens)
    facts.add_row("Time", view.time)
    facts.add_row("Memory", view.memory)
    facts.add_row("Device", view.device)
    facts.add_row("Model sha256", record.model.sha256)
    console.print(facts)
    if view.verdict is not None:
        verdict = view.verdict
        console.print(Text.assemble(
            (f" Reliability: {verdict.name} ", Style(color=verdict.ink, bgcolor=verdict.background,
                                                     bold=True)),
            f" {verdict.summary}"))
    if record.claims is not None:
        console.print(claims_table(record))


def claims_table(record: Explanation) -> Table:
    """Each statement of the answer, whether it rests on the case, and on which sentences."""
    claims = record.claims
    table = Table(title="What each statement rests on", title_justify="left", show_lines=True)
    table.add_column("", width=1)
    table.add_column("statement", ratio=2)
    table.add_column("top case sentences (share of its attribution)", ratio=3)
    for view in claim_views(record):
        mark = Text(view.marker, style="bold green" if view.grounded else "bold red")
        statement = Text(printable(view.text))
        statement.append(f"\n{view.verdict}; {view.support}",
                         style="dim" if view.grounded else "red")
        evidence = "\n".join(f"{100 * e.share:.0f}%  {e.text}" for e in view.evidence) or "-"
        table.add_row(mark, statement, evidence)
    table.caption = evidence_words(claims)
    return table


def per_answer_token_table(view: ExplanationView, rows: int = 32, words: int = 3) -> Table:
    """For each answer token, the case words its probability rests on most."""
    table = Table(title="What each answer token rests on (top case words)", title_justify="left")
    table.add_column("answer token")
    table.add_column("log p", justify="right")
    table.add_column("top case words (attribution)")
    for token, log_p, top in view.answer_token_rows(rows, words):
        table.add_row(token, f"{log_p:.2f}", top)
    total = len(view.record.attribution.per_token or ())
    if total > rows:
        table.caption = f"first {rows} of {total} answer tokens; all are in --json"
    return table


def render_methods(entries: list[dict[str, Any]], console: Console | None = None) -> None:
    console = console or SafeConsole()
    table = Table(title="Attribution methods")
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("parameters (default)")
    table.add_column("cost")
    for entry in entries:
        params = "\n".join(f"{p['name']} ({p['default']})" for p in entry["parameters"])
        table.add_row(entry["name"], entry["description"], params, entry["cost"]["formula"])
    console.print(table)


def render_evaluation(report: dict[str, Any], console: Console | None = None) -> None:
    """An evaluation's summary: mean ± standard deviation per method and metric, the best in
    bold."""
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
            cells.append(Text(text, style="bold") if best.get(metric) == method else text)
        table.add_row(method, str(report["cases"][method]),
                      f"{report['seconds'][method]:.1f}", *cells)
    (console or SafeConsole()).print(table)


def render_whatif(found: Any, console: Console | None = None) -> None:
    """Both answers with the differences marked, and how likely the original one still is."""
    console = console or SafeConsole()
    view = whatif_view(found)
    console.print(Text.assemble(("What if", "bold"), ": " + "; ".join(view.edits)))
    console.print(Panel(found.edited_case, title="The edited case", title_align="left"))
    merged = Text()
    for piece in view.diff:
        if merged:
            merged.append(" ")
        style = {"same": "", "removed": "strike red", "added": "bold green"}[piece.kind]
        merged.append(printable(piece.text), style=style)
    title = ("Answer: changed (struck: only in the original; bold: only in the new)"
             if view.changed else "Answer: the same")
    console.print(Panel(merged, title=title, title_align="left"))
    console.print(view.shift)
    if view.token_changes:
        console.print("Original answer tokens that lost most: " + ", ".join(
            f"{token!r} {change:+.2f}" for token, change in view.token_changes))


def render_sensitivity(record: Explanation, effects: Any, console: Console | None = None
                       ) -> None:
    """The case's sentences ranked by what taking each away does to the answer."""
    console = console or SafeConsole()
    console.print(Panel(record.answer.text or "(empty)", title="Answer", title_align="left"))
    table = Table(title="What removing each sentence does to the answer", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("sentence", ratio=3)
    table.add_column("answer", justify="right")
    table.add_column("greedy answer", justify="left")
    case = record.prompt.case_text
    for effect in effects:
        likely = likelihood_change(effect.fall)
        text = case[effect.start:effect.end]
        table.add_row(str(effect.sentence + 1),
                      f"[{effect.field}] {text}" if effect.field else text, likely,
                      f"changes at token {effect.first_change + 1}" if effect.answer_changes
                      else "unchanged")
    table.caption = ("one forward per sentence on the cached prefix; sentence numbers are what "
                     "whatif --remove-sentence takes")
    console.print(table)
