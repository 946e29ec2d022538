"""Terminal rendering of an explanation with rich: coloured case text, top words, timings."""

from __future__ import annotations

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
from rich.style import Style
from rich.table import Table
from rich.text import Text

from desktop.palette import (
    UNCOLOURED_BELOW,
    blend,
    completeness_hint,
    legend_words,
    text_colour,
)
from engine.fields import field_shares
from engine.grouping import top_spans, word_scores
from engine.record import Explanation
from engine.task import STAGES, TaskState


class RichTaskState(TaskState):
    """Progress bars on stderr for each stage; nothing printed with ``quiet``."""

    def __init__(self, quiet: bool = False) -> None:
        super().__init__()
        console = Console(stderr=True)
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


def coloured_case(record: Explanation) -> tuple[Text, float]:
    """The case text with each word's background coloured by its summed attribution."""
    prompt = record.prompt
    spans = word_scores(prompt.text, prompt.offsets, record.attribution.sequence,
                        prompt.attributable)
    scale = max((abs(s.score) for s in spans), default=0.0)
    case_start = prompt.text.rindex(prompt.case_text) if prompt.format == "chat" else 0
    text = Text()
    cursor = case_start
    for span in spans:
        text.append(prompt.text[cursor:span.start])
        if abs(span.score) < UNCOLOURED_BELOW * scale:
            text.append(span.text)  # near zero: plain, so the words that matter stand out
        else:
            r, g, b = blend(span.score, scale)
            text.append(span.text, Style(bgcolor=Color.from_rgb(r, g, b),
                                         color=text_colour(span.score, scale)))
        cursor = span.end
    text.append(prompt.text[cursor:case_start + len(prompt.case_text)])
    return text, scale


def render_explanation(record: Explanation, top: int = 10, console: Console | None = None
                       ) -> None:
    console = console or Console()
    model = record.model
    console.print(Text.assemble(("TokenTrace", "bold"), f" · {model.name} · {model.device} · "
                                f"{model.dtype} · method {record.method.name} · offline"))
    console.print(Panel(record.answer.text or "(empty)", title="Answer" +
                        (" (forced)" if record.answer.forced else ""), title_align="left"))
    text, scale = coloured_case(record)
    console.print(Panel(text, title="Case, coloured by attribution", title_align="left"))
    legend = Text("  scale ")
    for w in (-1.0, -0.5, 0.0, 0.5, 1.0):
        r, g, b = blend(w * scale, scale)
        legend.append(f" {w * scale:+.3g} ", Style(bgcolor=Color.from_rgb(r, g, b),
                                                  color=text_colour(w * scale, scale)))
    legend.append(f"   {legend_words(record.method.name)} · "
                  f"under {UNCOLOURED_BELOW:.0%} of the scale: uncoloured")
    console.print(legend)

    spans = [s for s in word_scores(record.prompt.text, record.prompt.offsets,
                                    record.attribution.sequence, record.prompt.attributable)
             if any(c.isalnum() for c in s.text)]  # punctuation is coloured, not listed
    total = sum(abs(s.score) for s in spans) or 1.0
    table = Table(title=f"{min(top, len(spans))} most influential words", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("word")
    table.add_column("attribution", justify="right")
    table.add_column("share", justify="right")
    for rank, span in enumerate(top_spans(spans, top), 1):
        table.add_row(str(rank), span.text, f"{span.score:+.4f}",
                      f"{100 * abs(span.score) / total:.1f}%")
    console.print(table)

    if record.attribution.per_field:
        fields = Table(title="Attribution per clinical field", title_justify="left")
        fields.add_column("field")
        fields.add_column("attribution", justify="right")
        fields.add_column("share", justify="right")
        for label, score, share in field_shares(record.attribution.per_field):
            fields.add_row(label, f"{score:+.4f}", f"{100 * share:.0f}%")
        console.print(fields)
    if record.attribution.per_token is not None:
        console.print(per_answer_token_table(record))

    t, hw, attr = record.timings, record.hardware, record.attribution
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    error = attr.completeness_error
    if error is None:
        facts.add_row("Completeness error", "not defined for this method")
    else:
        hint = completeness_hint(record.method.params, error, "--steps")
        facts.add_row("Completeness error",
                      f"{100 * error:.2f}% of F(case) - F(baseline){hint}")
    params = ", ".join(f"{k}={v}" for k, v in record.method.params.items())
    facts.add_row("Method", f"{record.method.name} ({params})")
    facts.add_row("Tokens", f"{sum(record.prompt.attributable)} case tokens of "
                            f"{len(record.prompt.token_ids)} prompt tokens; "
                            f"{len(record.answer.token_ids)} answer tokens")
    generate = "answer forced" if record.answer.forced else f"generate {t.generate_s:.1f} s"
    facts.add_row("Time", f"load {t.load_s:.1f} s · {generate} · "
                          f"attribute {t.attribute_s:.1f} s")
    memory = f"peak RSS {hw.peak_rss_mb:,.0f} MiB"
    if hw.peak_accelerator_mb is not None:
        memory += f" · peak accelerator {hw.peak_accelerator_mb:,.0f} MiB"
    facts.add_row("Memory", memory)
    facts.add_row("Device", hw.device_name)
    facts.add_row("Model sha256", model.sha256)
    console.print(facts)
    check = record.reliability
    if check is not None:
        style = {"strong": "bold white on green", "fair": "bold black on yellow",
                 "weak": "bold white on red"}.get(check.verdict, "bold")
        console.print(Text.assemble((f" Reliability: {check.verdict.capitalize()} ", style),
                                    f" {check.summary}"))


def per_answer_token_table(record: Explanation, rows: int = 32, words: int = 3) -> Table:
    """For each answer token, the case words its probability rests on most."""
    prompt = record.prompt
    table = Table(title="What each answer token rests on (top case words)", title_justify="left")
    table.add_column("answer token")
    table.add_column("log p", justify="right")
    table.add_column("top case words (attribution)")
    matrix = record.attribution.per_token or ()
    log_probs = record.answer.log_probs or (float("nan"),) * len(matrix)
    for token, log_p, row in list(zip(record.answer.tokens, log_probs, matrix,
                                      strict=True))[:rows]:
        spans = [s for s in word_scores(prompt.text, prompt.offsets, row, prompt.attributable)
                 if any(c.isalnum() for c in s.text)]
        top = ", ".join(f"{s.text} ({s.score:+.2f})" for s in top_spans(spans, words))
        table.add_row(repr(token)[1:-1], f"{log_p:.2f}", top)
    if len(matrix) > rows:
        table.caption = f"first {rows} of {len(matrix)} answer tokens; all are in --json"
    return table


def render_methods(entries: list[dict[str, Any]], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title="Attribution methods")
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("parameters (default)")
    table.add_column("cost")
    for entry in entries:
        params = "\n".join(f"{p['name']} ({p['default']})" for p in entry["parameters"])
        table.add_row(entry["name"], entry["description"], params, entry["cost"]["formula"])
    console.print(table)
