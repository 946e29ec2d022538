"""The ``tokentrace`` command.

Heavy imports (torch, transformers) happen inside the subcommands, so ``tokentrace --help`` and
``tokentrace methods`` start fast. Every expected failure ends with one line on stderr and the
error's exit code; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from engine.defaults import CHECK_PRECISIONS, DEFAULT_METHOD
from engine.errors import EXIT_INTERNAL

EXIT_CANCELLED = 130


def _whole(text: str, least: int) -> int:
    try:
        if not text.strip().isascii() or "_" in text:  # int() also reads "٣" and "1_0"
            raise ValueError
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text[:40]!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _whole(text, 1)


def _natural_int(text: str) -> int:
    return _whole(text, 0)


def output_file(text: str) -> Path:
    """A file to write: a name ending in a path separator names a folder (``--json out/``
    wrote a file called ``out`` before)."""
    if text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"{text!r} names a folder; give a file name in it")
    return Path(text)


MAX_THREADS = 512  # torch crashed (SIGSEGV) asked for 100,000


def _threads(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_THREADS}, got {value}")
    return value


def _option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        arguments = list(sys.argv[1:] if args is None else args)
        self._refuse_repeats(arguments)
        return super().parse_known_args(arguments, namespace)

    def _refuse_repeats(self, arguments: list[str]) -> None:
        """An option that keeps one value, given twice: argparse keeps the last silently
        (``--case-file a.txt --case-file b.txt`` explained b.txt alone)."""
        single = [action for action in self._actions if type(action) is argparse._StoreAction
                  and action.option_strings]
        seen: dict[int, str] = {}
        for argument in arguments:
            if argument == "--":
                break
            if not argument.startswith("-") or argument == "-":
                continue
            name = argument.split("=", 1)[0]
            found = [action for action in single if name in action.option_strings] or [
                action for action in single if name.startswith("--") and any(
                    option.startswith(name) for option in action.option_strings)]
            if len(found) != 1:
                continue  # not one of them (argparse says so if it is no option at all)
            if id(found[0]) in seen:
                first = seen[id(found[0])]
                also = f" (also as {first})" if first != name else ""
                self.error(f"{name} is given more than once{also}; give it once")
            seen[id(found[0])] = name


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tokentrace")
    except PackageNotFoundError:  # a frozen bundle without metadata
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tokentrace",
        description="Offline token-level attribution for clinical language-model answers.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_Parser)

    explain = commands.add_parser(
        "explain", help="answer a case and show which words of it drove the answer",
        description="Answer a clinical case with a local model and attribute the answer to the "
                    "words of the case.")
    explain.add_argument("text", nargs="?", help="the case text (or use --case-file)")
    explain.add_argument("--case-file", type=Path, help="read the case from a UTF-8 text file")
    explain.add_argument("--fields-file", type=Path, help="the case as clinical fields: a JSON "
                         "object such as {\"age\": 52, \"her2\": \"negative\"}; attribution is "
                         "also summed per field")
    explain.add_argument("--model", default="embedded",
                         help="'embedded' (default), a Hugging Face model folder, or a .gguf file")
    explain.add_argument("--method", default=DEFAULT_METHOD,
                         help=f"attribution method (default: {DEFAULT_METHOD}); "
                         "see `tokentrace methods`")
    explain.add_argument("--steps", type=_positive_int, default=None,
                         help="interpolation points or path anchors (default: the method's; "
                              "ig refines until the completeness error is below 5%%; an "
                              "explicit N is exactly N Gauss-Legendre points, as Captum)")
    explain.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                         type=_option, help="a method setting, e.g. --option mode=exact; "
                                            "repeatable; see `tokentrace methods`")
    explain.add_argument("--max-new-tokens", type=_positive_int, default=64,
                         help="longest answer to generate (default: 64)")
    explain.add_argument("--target", help="force this answer instead of generating one")
    explain.add_argument("--baseline", default="pad", help="pad (default), zero, or token:ID")
    explain.add_argument("--raw-prompt", action="store_true",
                         help="feed the case as is, without the chat template")
    explain.add_argument("--system", help="system prompt (default: a short clinical "
                         "decision-support instruction)")
    explain.add_argument("--no-matrix", action="store_true",
                         help="skip the per-answer-token matrix (much faster)")
    explain.add_argument("--batch-size", type=_positive_int,
                         help="interpolation points per forward pass (default: fit to memory)")
    explain.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    explain.add_argument("--dtype", default="auto",
                         choices=["auto", "float32", "bfloat16", "float16", "float64"])
    explain.add_argument("--top", type=_positive_int, default=10,
                         help="how many influential words to list (default: 10)")
    explain.add_argument("--json", type=output_file, metavar="OUT",
                         help="write the explanation record")
    explain.add_argument("--pdf", type=output_file, metavar="OUT", help="write the PDF report")
    explain.add_argument("--reliability", action="store_true",
                         help="also check how far the explanation can be trusted (its top words "
                              "against random ones, and a second method); seconds to minutes")
    explain.add_argument("--check-precision", choices=CHECK_PRECISIONS,
                         help="the check's word deletions: auto runs them in a bfloat16 copy of "
                              "a float32 model on a CPU with native bfloat16 (about twice as "
                              "fast), model in the model's own precision (default: auto)")
    explain.add_argument("--claims", action="store_true",
                         help="also split the answer into claims and find the case sentences "
                              "each rests on, checked by removing them (seconds)")
    explain.add_argument("--quiet", action="store_true", help="print no progress bar")

    app = commands.add_parser(
        "app", help="open the desktop window",
        description="Open TokenTrace's window. With --screenshot, explain the case headless, "
                    "save the window as a PNG and exit (without --case-file: save it as soon "
                    "as the model is loaded).")
    app.add_argument("--case-file", type=Path, help="a case to put in the editor")
    app.add_argument("--model", default="embedded",
                     help="'embedded' (default), a Hugging Face model folder, or a .gguf file")
    app.add_argument("--method", default=DEFAULT_METHOD,
                     help=f"attribution method (default: {DEFAULT_METHOD})")
    app.add_argument("--steps", type=_positive_int,
                     help="interpolation points (default: the method's; ig converges)")
    app.add_argument("--max-new-tokens", type=_positive_int,
                     help="longest answer to generate (default: 64)")
    app.add_argument("--screenshot", type=output_file, metavar="PNG",
                     help="run the whole flow on --case-file (or only start up, without one), "
                          "save the window here, exit")

    batch = commands.add_parser(
        "batch", help="explain every case of a JSONL or CSV file (resumable)",
        description="Explain every case of a case file with one model load. Writes a record "
                    "per case, a summary CSV and a summary PDF; a rerun resumes.")
    batch.add_argument("--cases", type=Path, required=True, help="cases (.jsonl or .csv)")
    batch.add_argument("--out", type=Path, required=True, help="output folder")
    batch.add_argument("--pdf", action="store_true", help="also write a PDF report per case")
    batch.add_argument("--from-fields", action="store_true",
                       help="explain each case's clinical fields (rendered as text) instead of "
                            "its text, and sum attribution per field")
    for option in ("--model", "--method", "--steps", "--option", "--max-new-tokens", "--target",
                   "--baseline", "--raw-prompt", "--system", "--no-matrix", "--batch-size",
                   "--device", "--dtype", "--quiet"):
        action = next(a for a in explain._actions if option in a.option_strings)
        batch._add_action(action)
    _add_cluster_options(batch)

    evaluate = commands.add_parser(
        "evaluate", help="faithfulness of attribution methods over a case file (resumable)",
        description="Answer each case once, explain the answer with every method, and score "
                    "each explanation's faithfulness (log-odds, comprehensiveness, sufficiency, "
                    "Soft-NC/NS, pi-Soft-NC/NS) next to a random attribution.")
    evaluate.add_argument("--cases", type=Path, required=True, help="cases (.jsonl or .csv)")
    evaluate.add_argument("--methods", default="ig,grad-ellm,random",
                          help="comma-separated methods; 'random' is the reference "
                               "(default: ig,grad-ellm,random)")
    evaluate.add_argument("--json", type=output_file, metavar="OUT",
                          help="write the full results (--json or --csv is needed; the "
                               "progress file is OUT.progress.jsonl)")
    evaluate.add_argument("--csv", type=output_file, metavar="OUT",
                          help="write one row per method (the progress file is "
                               "OUT.progress.jsonl without --json)")
    evaluate.add_argument("--markdown", type=output_file, metavar="OUT",
                          help="write the summary as a Markdown table")
    evaluate.add_argument("--plot", type=output_file, metavar="PNG",
                          help="the pi-curve plot (default: beside the JSON or CSV; none "
                               "with --no-soft)")
    evaluate.add_argument("--option", action="append", default=[], type=_option,
                          metavar="METHOD.KEY=VALUE",
                          help="a method's setting, e.g. heta.samples=2; repeatable")
    evaluate.add_argument("--max-new-tokens", type=_positive_int, default=16,
                          help="answer length per case (default: 16)")
    evaluate.add_argument("--samples", type=_positive_int, default=4,
                          help="random masks per Soft-NC/NS value (default: 4)")
    evaluate.add_argument("--seed", type=_natural_int, default=0,
                          help="seed of the masks (default: 0)")
    evaluate.add_argument("--granularity", choices=["sequence", "token"], default="sequence",
                          help="rank case tokens by the whole-answer attribution (default) or "
                               "by each answer token's own row (T times the forwards)")
    evaluate.add_argument("--no-soft", action="store_true",
                          help="skip Soft-NC/NS and pi-Soft-NC/NS (the costly metrics)")
    evaluate.add_argument("--limit", type=_positive_int, help="only the first N cases")
    for option in ("--model", "--baseline", "--system", "--device", "--dtype", "--quiet"):
        action = next(a for a in explain._actions if option in a.option_strings)
        evaluate._add_action(action)
    _add_cluster_options(evaluate)

    from desktop.cli.whatif import add_commands

    add_commands(commands, explain)
    methods = commands.add_parser("methods", help="list attribution methods and their cost")
    methods.add_argument("--json", action="store_true", help="machine-readable output")
    for command in commands.choices.values():  # also after the command, where users put it
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show tracebacks on errors")
    return parser


def _add_cluster_options(command: argparse.ArgumentParser) -> None:
    group = command.add_argument_group(
        "sharing the work (--workers and --ray need pip install 'tokentrace[cluster]'; "
        "docs/cluster.md)")
    group.add_argument("--workers", type=_positive_int, metavar="N",
                       help="share the cases among N worker processes, each loading the model "
                            "once (on this machine, which nothing leaves; with --ray, on the "
                            "cluster: default one per GPU, else one per node)")
    group.add_argument("--ray", metavar="HOST:PORT",
                       help="send the cases to the Ray cluster whose head is at HOST:PORT "
                            "(`ray start --head` there): they leave this machine for it")
    group.add_argument("--threads", type=_threads, metavar="N",
                       help="CPU threads of this process, or of each worker (default: every "
                            "core, shared out among the workers). Runs with the same threads "
                            "give identical records; others differ in the last digits")
    group.add_argument("--tries", type=_positive_int, default=2, metavar="N",
                       help="a case whose worker dies N times (killed, out of memory) is "
                            "skipped into failures.json (default: 2)")


@contextmanager
def _model_or_pool(args: argparse.Namespace, state: Any) -> Iterator[Any]:
    """The model, loaded here; or, with --workers or --ray, a pool of Ray workers that each
    load it (ended when the command ends, however it ends)."""
    from engine.models import ModelRequest, load_model

    request = ModelRequest(args.model, args.device, args.dtype)
    if args.workers is None and args.ray is None:
        import torch

        before = torch.get_num_threads()
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        try:
            yield load_model(request, state)
        finally:  # the command's own setting ends with it (a test suite runs many in one process)
            torch.set_num_threads(before)
        return
    ClusterSettings, RayPool = _cluster("ClusterSettings", "RayPool")
    cluster = ClusterSettings(workers=args.workers, address=args.ray, tries=args.tries,
                              threads=args.threads)
    with RayPool(request, cluster, state, log=lambda line: _stderr(f"tokentrace: {line}")) as pool:
        yield pool


def run_explain(args: argparse.Namespace) -> int:
    from engine.cases import read_any_case

    if args.check_precision is not None and not args.reliability:
        from engine.errors import InvalidSettingsError

        raise InvalidSettingsError("--check-precision sets the reliability check: add "
                                   "--reliability")
    case, spans = read_any_case(args.text, args.case_file, args.fields_file)
    request = replace(_request(args, case), fields=spans)
    request.validate()  # bad settings fail before a model is loaded
    if args.reliability:
        from engine.errors import InvalidSettingsError
        from engine.verdict import not_checkable

        reason = not_checkable(request.method_params())
        if reason:
            raise InvalidSettingsError(f"{reason}: drop --reliability or the span")
    from engine.files import check_distinct
    from engine.record import check_writable

    check_distinct({"case file": args.case_file, "fields file": args.fields_file},
                   {"record (--json)": args.json, "report (--pdf)": args.pdf})
    for path, what in ((args.json, "record"), (args.pdf, "report")):
        if path is not None:
            check_writable(path, what)  # and so does an output that cannot be written

    from desktop.cli.terminal import RichTaskState, render_explanation
    from engine.explain import explain
    from engine.models import ModelRequest, load_model

    with RichTaskState(quiet=args.quiet) as state:
        loaded = load_model(ModelRequest(args.model, args.device, args.dtype), state)
        record = explain(request, loaded, state)
        if args.reliability:
            from engine.reliability import check_reliability

            record = replace(record, reliability=check_reliability(
                loaded.model, loaded.tokenizer, record, precision=args.check_precision or "auto",
                state=state))
        if args.claims:
            from engine.claims import find_claims

            record = replace(record, claims=find_claims(loaded.model, loaded.tokenizer, record,
                                                        state=state))
    if args.json:
        from engine.audit import audited

        record.save(args.json)
        audited("export", record, file=str(args.json))
    if args.pdf:
        from desktop.report import write_pdf  # the only part of explain that needs Qt

        write_pdf(record, args.pdf)
    render_explanation(record, top=args.top)
    for label, path in (("Record", args.json), ("Report", args.pdf)):
        if path:
            print(f"{label} written to {path}")
    return 0


WINDOW_MAX_STEPS = 1024  # the settings panel's steps box holds no more


def run_app_command(args: argparse.Namespace) -> int:
    from engine.errors import InvalidSettingsError
    from engine.explain import ExplainRequest

    # The window's settings, checked as explain checks them before anything starts: an unknown
    # method aborted the window after it had started its engine thread, and a steps or answer
    # length out of range was clamped by the settings boxes, or dropped, silently.
    ExplainRequest("case", method=args.method, steps=args.steps,
                   max_new_tokens=args.max_new_tokens or 64).validate()
    _refuse_settings_the_method_lacks(args)
    if args.steps is not None and args.steps > WINDOW_MAX_STEPS:
        raise InvalidSettingsError(f"the window takes at most {WINDOW_MAX_STEPS} steps (got "
                                   f"{args.steps:,}); tokentrace explain takes more")
    from desktop.qt.app import run_app

    return run_app(args.case_file, args.model, args.method, args.steps, args.max_new_tokens,
                   args.screenshot)


def run_batch_command(args: argparse.Namespace) -> int:
    from desktop.cli.terminal import RichTaskState
    from desktop.report import PdfReports
    from engine.errors import Cancelled
    from engine.jobs.batch import BatchSettings, run_batch

    settings = BatchSettings(
        cases_file=args.cases, out=args.out, template=_request(args, "placeholder"),
        from_fields=args.from_fields, pdf=args.pdf)
    settings.validate()  # bad settings and a broken case file fail before the model loads
    _validate_cluster(args)
    with RichTaskState(quiet=args.quiet) as state:
        try:
            with _model_or_pool(args, state) as loaded:
                result = run_batch(settings, loaded, state, PdfReports(), log=_stderr)
        except (KeyboardInterrupt, Cancelled):
            _stderr(f"tokentrace: batch stopped; what finished is in {args.out}. Run the same "
                    "command again to resume.")
            return EXIT_CANCELLED
    print(f"{result.explained} cases explained, {result.resumed} already done, "
          f"{result.failed} skipped; summary in {args.out / 'summary.csv'}")
    if result.failed and not (result.explained or result.resumed):
        _stderr(f"tokentrace: no case could be explained; the reasons are in "
                f"{args.out / 'failures.json'}")
        return 1  # nothing was kept: a script must not read this run as done
    return 0


def run_evaluate_command(args: argparse.Namespace) -> int:
    from desktop.cli.terminal import RichTaskState, render_evaluation
    from engine.errors import Cancelled, InvalidSettingsError
    from engine.evaluation import EvaluationSettings
    from engine.jobs.evaluate import EvaluateSettings, parse_method_options, run_evaluation
    from engine.metrics import MetricSettings
    from engine.prompting import DEFAULT_SYSTEM_PROMPT

    if args.plot is not None and args.no_soft:
        raise InvalidSettingsError("--plot draws the pi-Soft curves, which --no-soft skips: "
                                   "drop one of them")
    settings = EvaluateSettings(
        cases_file=args.cases, json=args.json, csv=args.csv, markdown=args.markdown,
        limit=args.limit, evaluation=EvaluationSettings(
            methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
            options=parse_method_options(args.option), max_new_tokens=args.max_new_tokens,
            baseline=args.baseline,
            system_prompt=DEFAULT_SYSTEM_PROMPT if args.system is None else args.system,
            metrics=MetricSettings(samples=args.samples, seed=args.seed,
                                   granularity=args.granularity, soft=not args.no_soft)))
    settings.validate()
    _validate_cluster(args)
    main_out = args.json or args.csv
    plot = None if args.no_soft else (args.plot or main_out.with_name(
        main_out.stem + "-pi-curves.png"))
    if plot is not None:
        from engine.files import check_distinct
        from engine.record import check_writable

        check_distinct({"case list": settings.cases_file, "results (--json)": settings.json,
                        "table (--csv)": settings.csv, "summary (--markdown)": settings.markdown,
                        "progress file": settings.progress_path}, {"plot": plot})
        check_writable(plot, "plot")
    with RichTaskState(quiet=args.quiet) as state:
        try:
            with _model_or_pool(args, state) as loaded:
                report = run_evaluation(settings, loaded, state,
                                        log=lambda line: _stderr(f"tokentrace: {line}"))
        except (KeyboardInterrupt, Cancelled):
            _stderr(f"tokentrace: evaluation stopped; finished results are in "
                    f"{settings.progress_path}. Run the same command again to resume.")
            return EXIT_CANCELLED
    if plot is not None:
        from desktop.report.charts import write_plot

        write_plot(plot, report["curves"])
    if not args.quiet:
        render_evaluation(report)
    written = [str(p) for p in (args.json, args.csv, args.markdown, plot) if p]
    print(f"{report['cases_evaluated']} cases, {len(settings.evaluation.methods)} methods; "
          f"wrote {', '.join(written)}")
    return 0


def _validate_cluster(args: argparse.Namespace) -> None:
    """--workers/--ray settings, and Ray itself, are checked before any model loads."""
    if args.workers is None and args.ray is None:
        return
    ClusterSettings, import_ray = _cluster("ClusterSettings", "import_ray")
    ClusterSettings(workers=args.workers, address=args.ray, tries=args.tries).validate()
    import_ray()


def _cluster(*names: str) -> list[Any]:
    """Names from engine.jobs.cluster, which the desktop bundle leaves out."""
    try:
        from engine.jobs import cluster
    except ImportError:
        from engine.errors import ClusterError

        raise ClusterError("this build of TokenTrace runs on one machine only: --workers and "
                           "--ray need the Python package with its cluster extra (pip install "
                           "'tokentrace[cluster]'; docs/cluster.md)") from None
    return [getattr(cluster, name) for name in names]


def _request(args: argparse.Namespace, case: str):
    """The ExplainRequest the explain-like options describe, for ``case``."""
    from engine.explain import ExplainRequest
    from engine.prompting import DEFAULT_SYSTEM_PROMPT

    _refuse_settings_the_method_lacks(args)
    refuse_system_with_raw_prompt(args)
    return ExplainRequest(
        case_text=case, method=args.method, steps=args.steps,
        max_new_tokens=args.max_new_tokens, target=args.target, baseline=args.baseline,
        raw_prompt=args.raw_prompt,
        system_prompt=DEFAULT_SYSTEM_PROMPT if args.system is None else args.system,
        matrix=not args.no_matrix, batch_size=args.batch_size,
        options=tuple((key.replace("-", "_"), value) for key, value in args.option))


def refuse_system_with_raw_prompt(args: argparse.Namespace) -> None:
    """A raw prompt is the case as is: a system prompt given with it would be dropped."""
    if getattr(args, "raw_prompt", False) and getattr(args, "system", None) is not None:
        from engine.errors import InvalidSettingsError

        raise InvalidSettingsError("--system has no place in a raw prompt (--raw-prompt feeds "
                                   "the case as is): drop one of them")


def _refuse_settings_the_method_lacks(args: argparse.Namespace) -> None:
    """``--steps 32`` with a method that has no steps is a mistake to name, not to ignore."""
    from engine.errors import InvalidSettingsError
    from engine.methods import METHODS, get_method

    taken = get_method(args.method).defaults()
    given = (("--steps", "steps", args.steps is not None),  # app takes only the first
             ("--batch-size", "batch_size", getattr(args, "batch_size", None) is not None),
             ("--baseline", "baseline", getattr(args, "baseline", "pad") != "pad"))
    for flag, key, present in given:
        if present and key not in taken:
            takers = ", ".join(name for name, spec in METHODS.items() if key in spec.defaults())
            raise InvalidSettingsError(f"{args.method} takes no {flag}; it applies to {takers}")


def _stderr(line: str) -> None:
    from desktop.cli.text import printable

    print(printable(line), file=sys.stderr)


def run_methods(args: argparse.Namespace) -> int:
    from engine.methods import METHODS
    from engine.methods.base import Size

    example = Size(prompt=200, case=150, answer=64)
    entries: list[dict[str, Any]] = []
    for spec in METHODS.values():
        cost = spec.cost(example, spec.defaults())
        entries.append({
            "name": spec.name,
            "description": spec.description,
            "parameters": [{"name": p.name, "default": p.default, "help": p.help}
                           for p in spec.params],
            "cost": {"formula": spec.cost_formula,
                     "example": {"prompt_tokens": example.prompt,
                                 "case_tokens": example.case,
                                 "answer_tokens": example.answer, "forwards": cost.forwards,
                                 "backwards": cost.backwards, "tokens_per_pass": cost.tokens}},
        })
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    from desktop.cli.terminal import render_methods

    render_methods(entries)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from desktop.cli.whatif import run_sensitivity, run_whatif

    handler = {"explain": run_explain, "app": run_app_command, "batch": run_batch_command,
               "evaluate": run_evaluate_command, "methods": run_methods, "whatif": run_whatif,
               "sensitivity": run_sensitivity}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("tokentrace: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except BaseException as exc:  # Exception, and a panic in a library's Rust code
        from engine.prompting import is_panic

        if args.debug or not (isinstance(exc, Exception) or is_panic(exc)):
            raise
        from desktop.cli.text import printable
        from engine.errors import TokenTraceError

        if isinstance(exc, TokenTraceError):
            print(f"tokentrace: {printable(str(exc))}", file=sys.stderr)
            return exc.exit_code
        print(f"tokentrace: internal error: {type(exc).__name__}: {printable(str(exc))} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL

