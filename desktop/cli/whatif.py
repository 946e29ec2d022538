"""``tokentrace whatif`` and ``tokentrace sensitivity``: change a finding, or take each sentence
away, and see what happens to the answer (engine/whatif.py)."""

from __future__ import annotations

import argparse
import re
from typing import Any

from desktop.cli import _positive_int, output_file


def _replacement(text: str) -> tuple[str, str]:
    """OLD=NEW, split at the first ``=`` not written ``\\=`` (an ``=`` inside OLD or NEW)."""
    parts = re.split(r"(?<!\\)=", text, maxsplit=1)
    if len(parts) != 2 or not parts[0]:
        raise argparse.ArgumentTypeError(f"expected OLD=NEW (write an = inside OLD or NEW as "
                                         f"\\=), got {text!r}")
    old, new = (part.replace("\\=", "=") for part in parts)
    return old, new


class _EditAction(argparse.Action):
    """Collects --replace/--remove/--remove-sentence in the order given."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        from engine.whatif import Edit

        edits = list(getattr(namespace, "edits", None) or [])
        if option_string == "--replace":
            edits.append(Edit("replace", value[0], value[1]))
        elif option_string == "--remove":
            edits.append(Edit("remove", value))
        else:
            edits.append(Edit("remove-sentence", str(value)))
        namespace.edits = edits


def add_commands(commands: Any, explain: argparse.ArgumentParser) -> None:
    """The two subcommands, sharing explain's case and model options."""
    shared = ("--case-file", "--fields-file", "--model", "--max-new-tokens", "--system",
              "--raw-prompt", "--device", "--dtype", "--quiet")
    whatif = commands.add_parser(
        "whatif", help="change a finding of the case and see whether the answer changes",
        description="Answer the case, apply the edits in order, answer the edited case, and "
                    "show both answers with the differences and how much less (or more) likely "
                    "the original answer is under the edit.")
    whatif.add_argument("text", nargs="?", help="the case text (or use --case-file)")
    whatif.add_argument("--replace", type=_replacement, action=_EditAction, metavar="OLD=NEW",
                        help="replace every OLD with NEW (e.g. 'HER2 negative=HER2 positive'; "
                             "whole words only: ER is not the ER of HER2; an = inside OLD or "
                             "NEW is written \\=)")
    whatif.add_argument("--remove", action=_EditAction, metavar="TEXT",
                        help="remove every TEXT (whole words only)")
    whatif.add_argument("--remove-sentence", type=_positive_int, action=_EditAction, metavar="N",
                        help="remove sentence N (from 1; `tokentrace sensitivity` numbers them)")
    whatif.add_argument("--json", type=output_file, metavar="OUT", help="write the what-if record")
    whatif.add_argument("--pdf", type=output_file, metavar="OUT",
                        help="write the PDF report of the original case with the what-if")
    sensitivity = commands.add_parser(
        "sensitivity", help="remove each sentence in turn and rank them by their effect",
        description="Answer the case, then remove each sentence in turn (one forward each, no "
                    "new answer) and rank the sentences by how much the answer's probability "
                    "falls, and whether the greedy answer would change.")
    sensitivity.add_argument("text", nargs="?", help="the case text (or use --case-file)")
    sensitivity.add_argument("--json", type=output_file, metavar="OUT", help="write the ranking")
    for parser in (whatif, sensitivity):
        for option in shared:
            action = next(a for a in explain._actions if option in a.option_strings)
            parser._add_action(action)
        parser.set_defaults(edits=None)


def _request(args: argparse.Namespace) -> Any:
    """The original case's explanation request (IFR, no matrix: the answer and its cheapest
    explanation), checked before any model loads."""
    from desktop.cli import refuse_system_with_raw_prompt
    from engine.cases import read_any_case
    from engine.explain import ExplainRequest
    from engine.prompting import DEFAULT_SYSTEM_PROMPT

    refuse_system_with_raw_prompt(args)
    case, spans = read_any_case(args.text, args.case_file, args.fields_file)
    request = ExplainRequest(
        case_text=case, method="ifr", max_new_tokens=args.max_new_tokens, matrix=False,
        raw_prompt=args.raw_prompt, fields=spans,
        system_prompt=DEFAULT_SYSTEM_PROMPT if args.system is None else args.system)
    request.validate()
    return request


def _explained(args: argparse.Namespace, request: Any, state: Any) -> tuple[Any, Any]:
    from engine.explain import explain
    from engine.models import ModelRequest, load_model

    loaded = load_model(ModelRequest(args.model, args.device, args.dtype), state)
    return loaded, explain(request, loaded, state)


def run_whatif(args: argparse.Namespace) -> int:
    from desktop.cli.terminal import RichTaskState, render_whatif
    from engine.errors import InvalidInputError
    from engine.files import check_distinct
    from engine.record import check_writable
    from engine.whatif import apply_edits, what_if

    if not args.edits:
        raise InvalidInputError("give at least one edit: --replace OLD=NEW, --remove TEXT or "
                                "--remove-sentence N")
    request = _request(args)
    apply_edits(request.case_text, args.edits)  # an edit that finds nothing fails now
    check_distinct({"case file": args.case_file, "fields file": args.fields_file},
                   {"what-if record (--json)": args.json, "report (--pdf)": args.pdf})
    for path, what in ((args.json, "what-if record"), (args.pdf, "report")):
        if path is not None:
            check_writable(path, what)
    with RichTaskState(quiet=args.quiet) as state:
        loaded, record = _explained(args, request, state)
        found = what_if(loaded.model, loaded.tokenizer, record, args.edits,
                        max_new_tokens=args.max_new_tokens, state=state)
    if args.json:
        from engine.audit import audited

        found.save(args.json)
        audited("export", record, file=str(args.json))
    if args.pdf:
        from desktop.report import write_pdf

        write_pdf(record, args.pdf, what_ifs=(found,))
    render_whatif(found)
    for label, path in (("What-if record", args.json), ("Report", args.pdf)):
        if path:
            print(f"{label} written to {path}")
    return 0


def run_sensitivity(args: argparse.Namespace) -> int:
    import json

    from desktop.cli.terminal import RichTaskState, render_sensitivity
    from engine.files import check_distinct
    from engine.record import check_writable, write_text_atomic
    from engine.whatif import sensitivity

    request = _request(args)  # bad settings fail before the model loads
    check_distinct({"case file": args.case_file, "fields file": args.fields_file},
                   {"ranking (--json)": args.json})
    if args.json is not None:
        check_writable(args.json, "ranking")
    with RichTaskState(quiet=args.quiet) as state:
        loaded, record = _explained(args, request, state)
        effects = sensitivity(loaded.model, record, state=state)
    if args.json:
        case = record.prompt.case_text
        write_text_atomic(args.json, json.dumps({
            "case_sha256": record.prompt.case_sha256, "answer": record.answer.text,
            "model_sha256": record.model.sha256,
            "sentences": [{"sentence": e.sentence + 1, "field": e.field,
                           "text": case[e.start:e.end],
                           "fall": e.fall, "answer_changes": e.answer_changes,
                           "first_changed_token": e.first_change} for e in effects]},
            indent=1, ensure_ascii=False))
    render_sensitivity(record, effects)
    if args.json:
        print(f"Ranking written to {args.json}")
    return 0
