"""The explanation record: frozen dataclasses and their JSON form (``schema_version`` 1).

Plain Python values only (no torch), so the CLI, the GUI and the report can read a record without
paying for torch. Sequences are tuples so a record is immutable; ``to_dict``/``from_dict`` round
trip exactly (floats are written with ``repr`` precision by :mod:`json`).

Shapes: ``n`` prompt tokens, ``T`` answer tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.defaults import PERCENTS
from engine.errors import InvalidInputError, OutputError
from engine.fields import field_scores
from engine.files import AUDIT_LOG, check_regular_file, is_audit_log, parse_json
from engine.verdict import VERDICTS, summary_of, verdict_of

SCHEMA_VERSION = 1
# Precisions a reliability check's perturbed prompts can have run in: the model's own dtype, or
# a bfloat16 twin of a float32 model (engine/precision.py); "": not recorded (older files).
CHECK_PRECISION_NAMES = ("", "float32", "float64", "bfloat16", "float16", "bfloat16-twin")
MAX_RECORD_BYTES = 1_000_000_000  # a full matrix of an 8,000-token case and 4,096 answer tokens


@dataclass(frozen=True)
class Versions:
    tokentrace: str
    torch: str
    transformers: str
    captum: str


@dataclass(frozen=True)
class ModelInfo:
    name: str
    source: str  # "embedded", a folder path, or a .gguf path
    sha256: str  # of the weights file(s), in sorted file-name order
    dtype: str
    device: str
    parameters: int
    context_length: int = 0
    tokenizer_sha256: str = ""  # the tokenizer's canonical JSON (vocabulary, normalizer...)
    template_sha256: str = ""  # the chat template's text ("" hashed when there is none)
    vocab_size: int = 0  # rows of the input embedding; token ids lie below it (0: not recorded)

    def __post_init__(self) -> None:
        if any(value < 0 for value in (self.parameters, self.context_length, self.vocab_size)):
            raise ValueError("a model size (parameters, context, vocabulary) is negative")


@dataclass(frozen=True)
class MethodInfo:
    name: str
    params: dict[str, Any] = field(default_factory=dict)


def case_start(text: str, case_text: str, offsets: Sequence[tuple[int, int]],
               attributable: Sequence[bool]) -> int:
    """Where ``case_text`` begins in the prompt ``text``: the occurrence of it that holds the
    case's (attributable) tokens, since a short case may also occur in the chat template ("Hi"
    before the template's own "Hi"); -1 if none does."""
    spans = [span for span, case in zip(offsets, attributable, strict=True) if case]
    found = text.find(case_text)
    while found >= 0:
        end = found + len(case_text)
        if all(e > found and s < end for s, e in spans):
            return found
        found = text.find(case_text, found + 1)
    return -1


@dataclass(frozen=True)
class Prompt:
    text: str  # exactly what was tokenized
    case_text: str
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]  # display text of each token
    attributable: tuple[bool, ...]  # False for chat-template tokens
    offsets: tuple[tuple[int, int], ...] = ()  # character span of each token in ``text``
    format: str = "chat"  # "chat" (tokenizer's template) or "raw"
    system_prompt: str | None = None
    # Clinical fields the case was rendered from: (name, start, end) in ``case_text``.
    fields: tuple[tuple[str, int, int], ...] = ()
    case_sha256: str = ""  # of case_text, UTF-8: what an audit log names the case by

    @property
    def case_start(self) -> int:
        """Where the case text begins in ``text`` (see :func:`case_start`)."""
        return case_start(self.text, self.case_text, self.offsets, self.attributable)

    def __post_init__(self) -> None:
        n = len(self.token_ids)
        if not len(self.tokens) == len(self.attributable) == n:
            raise ValueError(f"prompt has {n} ids, {len(self.tokens)} tokens, "
                             f"{len(self.attributable)} attributable flags")
        if len(self.offsets) != n:  # every view places the tokens in the text by them
            raise ValueError(f"prompt has {n} ids but {len(self.offsets)} offsets")
        if self.case_sha256 and self.case_sha256 != hashlib.sha256(
                self.case_text.encode("utf-8")).hexdigest():
            raise ValueError("the case text does not match its sha256 (the file was altered)")
        _check_ids("prompt", self.token_ids)
        if self.format not in ("chat", "raw"):
            raise ValueError(f"unknown prompt format {self.format!r}")
        if self.format == "raw" and (self.text != self.case_text or self.system_prompt):
            raise ValueError("a raw prompt is the case text alone, with no system prompt")
        for start, end in self.offsets:
            if not 0 <= start <= end <= len(self.text):
                raise ValueError(f"a token span ({start}, {end}) lies outside the prompt's "
                                 f"{len(self.text)} characters")
        # Each token shows its own characters (a special token, with none, shows its name),
        # and the tokens follow the text's order: spans swapped between two words would show
        # one word's score on the other.
        starts = [start for start, end in self.offsets if end > start]  # an appended EOS: (0, 0)
        if starts != sorted(starts) or any(
                end > start and token != self.text[start:end]
                for token, (start, end) in zip(self.tokens, self.offsets, strict=True)):
            raise ValueError("the prompt's tokens are not its text's characters in order (the "
                             "file was altered)")
        # Only the case's own tokens are coloured.
        if any(self.attributable) and (self.case_start < 0 or not all(
                e > s for (s, e), a in zip(self.offsets, self.attributable, strict=True) if a)):
            raise ValueError("a token outside the case text is marked as the case's")
        for name, start, end in self.fields:
            if not 0 <= start <= end <= len(self.case_text):
                raise ValueError(f"field {name!r} ({start}, {end}) lies outside the case's "
                                 f"{len(self.case_text)} characters")


@dataclass(frozen=True)
class Answer:
    text: str
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    forced: bool
    log_probs: tuple[float, ...] = ()  # log p(y_t | x, y_<t) under the model, one per token

    def __post_init__(self) -> None:
        t = len(self.token_ids)
        if t == 0:
            raise ValueError("the answer has no tokens")
        if len(self.tokens) != t or (self.log_probs and len(self.log_probs) != t):
            raise ValueError(f"the answer has {t} ids, {len(self.tokens)} tokens and "
                             f"{len(self.log_probs)} log-probabilities")
        _check_ids("answer", self.token_ids)
        if any(not value <= 0 for value in self.log_probs):  # NaN fails too
            raise ValueError("a log-probability is above 0 or not a number")
        if "".join(self.tokens) != self.text:  # what is read must be what was scored
            raise ValueError("the answer's text is not its tokens joined (the file was "
                             "altered, or made by TokenTrace before 2026-11-30 from an answer "
                             "with characters split across tokens: explain the case again)")


@dataclass(frozen=True)
class Attribution:
    sequence: tuple[float, ...]  # [n]; 0 where not attributable
    per_token: tuple[tuple[float, ...], ...] | None  # [T][n], or None with --no-matrix
    completeness_error: float | None  # |sum(sequence) - (F(x) - F(baseline))| / |F(x) - F(b)|
    per_field: dict[str, float] = field(default_factory=dict)  # sequence summed per field


@dataclass(frozen=True)
class Timings:
    load_s: float
    generate_s: float
    attribute_s: float


@dataclass(frozen=True)
class Hardware:
    device_name: str
    peak_rss_mb: float
    peak_accelerator_mb: float | None


@dataclass(frozen=True)
class Reliability:
    """The quick faithfulness check of one explanation (engine/reliability.py)."""

    verdict: str  # "strong", "fair" or "weak"
    summary: str  # one plain-language sentence with the numbers
    comprehensiveness: float  # AOPC, the explanation's top words deleted
    random_comprehensiveness: float  # the same for random rankings (mean of the draws)
    sufficiency: float  # AOPC, only the explanation's top words kept
    random_sufficiency: float
    second_method: str
    rank_correlation: float  # Spearman, over the case tokens
    random_draws: int  # random rankings behind random_comprehensiveness
    seconds: float
    # What the perturbed prompts ran in: the model's own dtype, or "bfloat16-twin" for a float32
    # model's rounded twin (engine/precision.py); "" in records from before it was recorded.
    precision: str = ""
    # The levels (% of the case) its AOPC averages; records from before they were recorded were
    # checked at all five.
    percents: tuple[int, ...] = PERCENTS
    # Random rankings behind random_sufficiency: a close call draws more for the figure that is
    # close alone; 0 in records from before, whose two figures share random_draws.
    sufficiency_draws: int = 0

    @property
    def draws(self) -> tuple[int, int]:
        """Random rankings behind chance's (comprehensiveness, sufficiency)."""
        return self.random_draws, self.sufficiency_draws or self.random_draws


@dataclass(frozen=True)
class Claim:
    """One statement of the answer and the case sentences it rests on (engine/claims.py)."""

    text: str
    tokens: tuple[int, int]  # answer tokens [start, end)
    evidence: tuple[float, ...]  # per case sentence: its share of the claim's attribution
    log_prob: float  # log p(claim | the whole case): its tokens' log-probabilities summed
    drops: tuple[tuple[int, float], ...]  # (sentence, fall of log_prob with it removed)
    joint_drop: float  # fall of log_prob with every tested sentence removed at once
    kept_drop: float  # fall of log_prob with only the top sentence kept (0 when it suffices)
    support: float  # fall of log_prob without the whole case, per claim token, in nats
    grounded: bool  # support >= the threshold

    def __post_init__(self) -> None:
        start, end = self.tokens
        if not 0 <= start < end:
            raise ValueError(f"a claim's token span {self.tokens} is empty or negative")
        if not all(math.isfinite(v) for v in (*self.evidence, self.log_prob, self.joint_drop,
                                              self.kept_drop, self.support,
                                              *(d for _, d in self.drops))):
            raise ValueError("a claim's score is not a finite number")


@dataclass(frozen=True)
class Claims:
    """The answer claim by claim, with its evidence among the case's sentences."""

    sentences: tuple[tuple[int, int], ...]  # character spans in prompt.case_text
    claims: tuple[Claim, ...]
    evidence_method: str  # what ranks the sentences: "leave-one-out" (each removed in turn; up
    # to 64 sentences, the default) or an attribution method (one pass per claim)
    candidates: int  # top sentences per claim tested by removal
    threshold: float  # nats per token: a claim supported less rests on nothing in the case
    seconds: float


@dataclass(frozen=True)
class Explanation:
    versions: Versions
    model: ModelInfo
    method: MethodInfo
    prompt: Prompt
    answer: Answer
    attribution: Attribution
    timings: Timings
    hardware: Hardware
    reliability: Reliability | None = None  # the quick check, when it was run
    claims: Claims | None = None  # claim by claim evidence, when it was asked for
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        n, t = len(self.prompt.token_ids), len(self.answer.token_ids)
        if len(self.attribution.sequence) != n:
            raise ValueError(f"sequence attribution has {len(self.attribution.sequence)} "
                             f"scores for {n} prompt tokens")
        matrix = self.attribution.per_token
        if matrix is not None and (len(matrix) != t or any(len(row) != n for row in matrix)):
            raise ValueError(f"per-token attribution must be {t} x {n}")
        vocab = self.model.vocab_size
        if vocab > 0 and any(i >= vocab for i in (*self.prompt.token_ids,
                                                  *self.answer.token_ids)):
            raise ValueError(f"a token id lies outside the model's vocabulary of {vocab}")
        _check_scores(self.attribution)
        unknown = set(self.attribution.per_field) - {name for name, _, _ in self.prompt.fields}
        if unknown:
            raise ValueError(f"per-field scores name {sorted(unknown)[0]!r}, which is not a "
                             "field of the case")
        if self.reliability is not None and self.reliability.verdict not in VERDICTS:
            raise ValueError(f"unknown reliability verdict {self.reliability.verdict!r}")
        if any(not 0 <= value < MAX_SECONDS for value in (
                self.timings.load_s, self.timings.generate_s, self.timings.attribute_s)):
            raise ValueError("a timing is negative or past a year")
        memory = (self.hardware.peak_rss_mb, self.hardware.peak_accelerator_mb or 0.0)
        if any(not 0 <= value < MAX_MEMORY_MB for value in memory):
            raise ValueError("a peak memory is negative or past a petabyte")
        if self.claims is not None:
            _check_claims(self.claims, len(self.prompt.case_text), self.answer)
        _check_lengths(self)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Explanation:
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version != SCHEMA_VERSION:
            raise InvalidInputError(
                f"unsupported explanation schema_version {version!r}: this TokenTrace reads "
                f"version {SCHEMA_VERSION}"
            )
        if data.get("reliability") is not None:  # judged before the (large) record is built
            try:
                judged = _judged(from_plain(Reliability, data["reliability"]))
            except ValueError as exc:
                raise InvalidInputError(f"not a valid explanation file ({exc})") from None
            data = {**data, "reliability": to_plain(judged)}
        record = from_plain(cls, data)
        if record.claims is not None:  # each flag as its own support and threshold say
            record = dataclasses.replace(record, claims=_flagged(record.claims))
        if record.attribution.per_field:  # each field's score as its tokens' scores sum
            prompt = record.prompt
            worked = field_scores(prompt.offsets, record.attribution.sequence,
                                  prompt.attributable, prompt.fields, prompt.case_start)
            record = dataclasses.replace(record, attribution=dataclasses.replace(
                record.attribution, per_field=worked))
        return record

    @classmethod
    def from_json(cls, text: str) -> Explanation:
        try:
            data = parse_json(text)
        except ValueError as exc:
            raise InvalidInputError(f"not an explanation file (invalid JSON: {exc})") from None
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the JSON atomically: a crash mid-write never corrupts an existing file."""
        write_text_atomic(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Explanation:
        check_regular_file(Path(path), "explanation file", MAX_RECORD_BYTES)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"cannot read explanation {path}: {exc}") from None
        return cls.from_json(text)


def _check_ids(what: str, ids: tuple[int, ...]) -> None:
    if any(i < 0 for i in ids):
        raise ValueError(f"a {what} token id is negative")


MAX_CANDIDATES = 1000  # top sentences tested per claim
MAX_THRESHOLD = 50.0  # nats per token: e^50 times less likely is already past any claim's fall


def _flagged(claims: Claims) -> Claims:
    """An opened file's claims with "grounded" worked out again from each claim's support and
    the file's threshold, as the reliability verdict is: a file edited to say a claim rests on
    the case reads as its figures do."""
    return dataclasses.replace(claims, claims=tuple(
        dataclasses.replace(claim, grounded=claim.support >= claims.threshold)
        for claim in claims.claims))


MAX_LABEL_CHARS = 5_000  # a name, a path, a setting's text (a path is at most 4,096)
MAX_TEXT_CHARS = 1_000_000  # the rendered prompt, one token's text
# An answer is at most 4,096 tokens (explain's limit) of at most about 48 characters; a longer
# one from an edited file made the report lay out for minutes (104 s for 900,000 characters).
MAX_ANSWER_CHARS = 200_000


def _check_lengths(record: Explanation) -> None:
    """No label or text longer than anything TokenTrace writes: a 400,000-character model
    name or setting from an edited file made the report's layout run for minutes."""
    model, params, claims = record.model, record.method.params, record.claims
    labels = [("model name", model.name), ("model source", model.source),
              ("precision", model.dtype), ("device", model.device),
              ("device name", record.hardware.device_name), ("method", record.method.name),
              *((f"name of setting {key[:40]!r}", key) for key in params),
              *((f"setting {key[:40]!r}", value) for key, value in params.items()
                if isinstance(value, str)),
              *((f"name of field {name[:40]!r}", name) for name, _, _ in record.prompt.fields),
              *((f"name of field {name[:40]!r}", name) for name in record.attribution.per_field),
              ("second method", record.reliability.second_method if record.reliability else ""),
              ("claims' evidence method", claims.evidence_method if claims else ""),
              *((f"{name} version", getattr(record.versions, name)) for name in (
                  "tokentrace", "torch", "transformers", "captum")),
              ("creation time", record.created_at)]  # a claim's text is part of the answer
    for what, text in labels:
        if len(text) > MAX_LABEL_CHARS:
            raise ValueError(f"the {what} is {len(text):,} characters long (at most "
                             f"{MAX_LABEL_CHARS:,})")
    for what, text, limit in (("prompt", record.prompt.text, MAX_TEXT_CHARS),
                              ("answer", record.answer.text, MAX_ANSWER_CHARS),
                              ("system prompt", record.prompt.system_prompt or "", MAX_TEXT_CHARS),
                              ("prompt's tokens", "".join(record.prompt.tokens), MAX_TEXT_CHARS)):
        if len(text) > limit:
            raise ValueError(f"the {what} is {len(text):,} characters long (at most "
                             f"{limit:,})")


def _check_claims(claims: Claims, case_chars: int, answer: Answer) -> None:
    answer_tokens = len(answer.token_ids)
    if not (0 < claims.threshold <= MAX_THRESHOLD and 0 <= claims.seconds < MAX_SECONDS
            and 0 <= claims.candidates <= MAX_CANDIDATES):
        raise ValueError(f"the claims' threshold, time or candidates are out of range (a "
                         f"threshold from 0 to {MAX_THRESHOLD:.0f} nats per token, a time under "
                         f"a year, 0 to {MAX_CANDIDATES} candidates)")
    sentences = len(claims.sentences)
    for start, end in claims.sentences:
        if not 0 <= start < end <= case_chars:
            raise ValueError(f"a case sentence ({start}, {end}) lies outside the case's "
                             f"{case_chars} characters")
    for claim in claims.claims:
        if claim.tokens[1] > answer_tokens:
            raise ValueError(f"a claim's tokens {claim.tokens} lie beyond the answer's "
                             f"{answer_tokens}")
        if not claim.text.strip() or claim.text not in answer.text:
            raise ValueError("a claim's text is not part of the answer")
        if any(not 0 <= share <= 1 for share in claim.evidence) or sum(claim.evidence) > 1.001:
            raise ValueError("a claim's evidence shares are not shares (each from 0 to 1, "
                             "summing to at most 1)")
        if len(claim.evidence) != sentences or any(
                not 0 <= index < sentences for index, _ in claim.drops):
            raise ValueError(f"a claim's evidence does not match the {sentences} case sentences")


MAX_SECONDS = 365 * 24 * 3600.0  # a phase's time; more is not a run's figure
MAX_MEMORY_MB = 2.0**30  # a petabyte: more is not a machine's figure
MAX_DRAWS = 1000  # random rankings a check could draw; more is not a check's figure


def is_check_levels(percents: Any) -> bool:
    """Whether ``percents`` are levels a reliability check takes: some of the evaluation's, in
    order, each once, as plain integers."""
    return (isinstance(percents, tuple) and 0 < len(percents) <= len(PERCENTS)
            and all(type(k) is int and k in PERCENTS for k in percents)
            and list(percents) == sorted(set(percents)))


def _judged(check: Reliability) -> Reliability:
    """An opened check with its verdict and sentence worked out again from its own figures, so
    that the badge always says what those figures say (a file edited to read "strong" reads as
    its figures do, and so does a check saved under an earlier rule); figures no check can give
    are refused."""
    if check.verdict not in VERDICTS:
        raise ValueError(f"unknown reliability verdict {check.verdict!r}")
    figures = (check.comprehensiveness, check.random_comprehensiveness, check.sufficiency,
               check.random_sufficiency, check.rank_correlation)
    if not all(math.isfinite(value) for value in figures):
        raise ValueError("a reliability figure is not a finite number")
    if not -1 <= check.rank_correlation <= 1 or not 0 <= check.seconds < MAX_SECONDS \
            or not all(1 <= draws <= MAX_DRAWS for draws in check.draws) \
            or check.sufficiency_draws < 0:
        raise ValueError("a reliability figure is out of its range")
    if not isinstance(check.precision, str) or check.precision not in CHECK_PRECISION_NAMES:
        raise ValueError(f"unknown reliability precision {check.precision!r}")
    if not is_check_levels(check.percents):
        raise ValueError(f"reliability levels {list(check.percents)[:8]} are not some of "
                         f"{list(PERCENTS)} in order")
    return dataclasses.replace(check, verdict=verdict_of(*figures),
                               summary=summary_of(*figures, check.second_method))


MAX_SCORE = 1e15  # no method's score comes near it; sums of larger ones overflow to inf


def _check_scores(attribution: Attribution) -> None:
    """Every score finite, and small enough that the sums the views form stay finite: the
    window and the PDF colour what they are given."""
    rows = (attribution.sequence, *(attribution.per_token or ()),
            tuple(attribution.per_field.values()))
    if not all(math.isfinite(value) for row in rows for value in row):
        raise ValueError("an attribution score is not a finite number")
    if any(abs(value) > MAX_SCORE for row in rows for value in row):
        raise ValueError(f"an attribution score is larger than {MAX_SCORE:.0e}, which no "
                         "method gives")
    error = attribution.completeness_error
    if error is not None and not 0 <= error < math.inf:
        raise ValueError("the completeness error is negative or not a finite number")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` in one rename: a crash or a full disk mid-write never leaves
    a truncated file. Raises :class:`OutputError` (one line naming the file) on failure."""
    try:
        _write_atomic(Path(path), text)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


# Files written beside an output before they take its name: a short fixed prefix, so that an
# output whose name is as long as the file system allows can still be written.
SCRATCH = ".tokentrace-"


def scratch_beside(target: Path, suffix: str) -> Path:
    """A new empty file in ``target``'s folder to write before renaming it to ``target``, with
    the mode a plain write of ``target`` gives (mkstemp makes it owner-only)."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=SCRATCH, suffix=suffix)
    try:
        os.chmod(name, _file_mode(target))
    finally:
        os.close(fd)
    return Path(name)


def check_writable(path: Path, what: str = "output") -> None:
    """Fail now, before any compute, if ``path`` (a file to be written) cannot be written: a
    scratch file is created and removed in its folder, or, where that folder does not exist
    yet, in the nearest one that does. Nothing is made here: the writer makes the missing
    folders when it writes, so a run that fails leaves none behind."""
    path = Path(path)
    try:
        if path.is_dir():
            raise OutputError(f"the {what} {path} is a folder; give a file name")
        _refuse_special(path, what)
        folder = path.absolute().parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise OutputError(f"cannot write the {what} {path}: {folder} is a file, not a "
                              "folder")
        fd, scratch = tempfile.mkstemp(dir=folder, prefix=SCRATCH, suffix=".check")
        os.close(fd)
        os.unlink(scratch)
    except OSError as exc:
        raise OutputError(f"cannot write the {what} {path}: {exc.strerror or exc}") from None


def _refuse_special(path: Path, what: str) -> None:
    """A device, pipe or socket is never replaced by the file written in its place (as root,
    ``--json /dev/null`` would otherwise swap the real device node for a plain file), and nor
    is the audit log (its trail would be gone). A link to nothing is replaced by the file."""
    if is_audit_log(path):
        raise OutputError(f"the {what} {path} is the audit log ({AUDIT_LOG}): writing it would "
                          "replace the log; choose another name")
    if os.path.islink(path) and not os.path.exists(path):
        return
    if os.path.lexists(path) and not path.is_file() and not path.is_dir():
        raise OutputError(f"the {what} {path} is a device, pipe or socket, not a file; give a "
                          "file name")


def _write_atomic(path: Path, text: str) -> None:
    _refuse_special(path, "output")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=SCRATCH, suffix=".tmp")
    try:
        os.chmod(tmp, _file_mode(path))  # mkstemp makes 0600; keep what a plain write gives
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _file_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def to_plain(value: Any) -> Any:
    if is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (tuple, list)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value


def from_plain(tp: Any, value: Any) -> Any:
    """Rebuild ``value`` (parsed JSON) as type ``tp``, turning lists back into tuples."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return from_plain(inner, value)
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise InvalidInputError(f"not a valid explanation file ({tp.__name__} is "
                                    f"{_kind(value)}, not an object)")
        hints = typing.get_type_hints(tp)
        try:
            kwargs = {f.name: from_plain(hints[f.name], value[f.name])
                      for f in fields(tp) if f.name in value}
            return tp(**kwargs)
        except (TypeError, KeyError, ValueError) as exc:
            raise InvalidInputError(
                f"not a valid explanation file ({tp.__name__}: {exc})"
            ) from None
    if origin is tuple:
        if not isinstance(value, list):
            raise InvalidInputError(f"not a valid explanation file (expected a list, got "
                                    f"{_kind(value)})")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_plain(args[0], v) for v in value)
        if len(args) != len(value):
            raise InvalidInputError(f"not a valid explanation file (expected {len(args)} "
                                    f"values, got {len(value)})")
        return tuple(from_plain(a, v) for a, v in zip(args, value, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise InvalidInputError(f"not a valid explanation file (expected an object, got "
                                    f"{_kind(value)})")
        key_type, value_type = typing.get_args(tp)
        return {from_plain(key_type, k): from_plain(value_type, v) for k, v in value.items()}
    return _leaf(tp, value)


def _leaf(tp: Any, value: Any) -> Any:
    """``value`` checked to be of the scalar type ``tp`` (ints stand for floats, nothing else
    is converted): an opened file is untrusted, so a string where a token id belongs is an
    error here, not a crash in the window later."""
    if tp is Any:
        if isinstance(value, (dict, list)):
            raise InvalidInputError("not a valid explanation file (a method setting is "
                                    f"{_kind(value)}, not a number, text or true/false)")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise InvalidInputError("not a valid explanation file (a number too large for a "
                                    "float)") from None
    if (tp is int and isinstance(value, bool)) or not isinstance(value, tp):
        raise InvalidInputError(f"not a valid explanation file (expected "
                                f"{_TYPE_NAMES.get(tp, tp)}, got {_kind(value)})")
    return value


_TYPE_NAMES = {int: "an integer", float: "a number", str: "text", bool: "true or false"}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    names = {int: "an integer", float: "a number", str: "text", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)
