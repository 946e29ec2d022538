"""The embedded SmolLM2 model end to end: load (cold, then cached), explain, record round trip."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from desktop.cli import main
from engine.explain import ExplainRequest, explain
from engine.models import ModelRequest, embedded_gguf_path, load_model
from engine.record import Explanation
from engine.task import TaskState

pytestmark = pytest.mark.slow

CASE = ("A 61-year-old postmenopausal woman has a 1.8 cm invasive ductal carcinoma of the right "
        "breast, grade 2, ER positive, PR positive, HER2 negative, Ki-67 12%, sentinel node "
        "negative. What adjuvant treatment is recommended?")


@pytest.fixture(scope="module")
def embedded():
    cold = load_model(ModelRequest("embedded"))
    warm = load_model(ModelRequest("embedded"))
    return cold, warm


def test_gguf_is_cached_and_reloads_identically(embedded):
    cold, warm = embedded
    assert not cold.from_cache and warm.from_cache
    assert cold.info.sha256 == warm.info.sha256 and len(cold.info.sha256) == 64
    assert cold.info.parameters == warm.info.parameters > 100_000_000
    assert cold.info.context_length == 8192
    assert embedded_gguf_path().suffix == ".gguf"
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(cold.model(ids).logits, warm.model(ids).logits)


class _Streamed(TaskState):
    def __init__(self) -> None:
        super().__init__()
        self.pieces: list[str] = []

    def token_generated(self, token_id: int, text: str) -> None:
        self.pieces.append(text)


def test_explain_generated_answer(embedded):
    _, loaded = embedded
    state = _Streamed()
    record = explain(ExplainRequest(CASE, method="ig", steps=4, max_new_tokens=8), loaded, state)
    n, t = len(record.prompt.token_ids), len(record.answer.token_ids)
    assert 1 <= t <= 8 and not record.answer.forced
    assert "".join(state.pieces).strip() == record.answer.text.strip()
    assert len(record.attribution.per_token) == t
    assert all(len(row) == n for row in record.attribution.per_token)
    seq = torch.tensor(record.attribution.sequence)
    mask = torch.tensor(record.prompt.attributable)
    assert torch.all(seq[~mask] == 0) and seq[mask].abs().sum() > 0
    torch.testing.assert_close(torch.tensor(record.attribution.per_token).sum(0), seq)
    assert "".join(t for t, a in zip(record.prompt.tokens, record.prompt.attributable,
                                      strict=True) if a) == CASE
    assert record.model.name.startswith("SmolLM2-135M-Instruct")
    assert record.hardware.peak_rss_mb > 100 and record.timings.attribute_s > 0
    assert all(lp <= 0 for lp in record.answer.log_probs)
    assert Explanation.from_json(record.to_json()) == record


def test_the_default_reuses_generations_cache_with_the_same_numbers(embedded):
    """The window's default on the real model: IFR after generation reads the prompt's
    keys and values from generation's cache; the same numbers as a fresh forward."""
    from engine.methods import AttributionInput, get_method
    from engine.methods._information_flow import information_flow

    _, loaded = embedded
    record = explain(ExplainRequest(CASE, max_new_tokens=12, matrix=False), loaded)
    assert record.method.name == "ifr" and record.attribution.completeness_error is None
    seq = torch.tensor(record.attribution.sequence)
    mask = torch.tensor(record.prompt.attributable)
    assert torch.all(seq[~mask] == 0) and torch.all(seq >= 0) and seq[mask].sum() > 0
    fresh = information_flow(loaded.model, loaded.tokenizer, AttributionInput(
        torch.tensor(record.prompt.token_ids), mask, torch.tensor(record.answer.token_ids)),
        **get_method("ifr").defaults())
    fresh_seq = torch.where(mask, fresh.sequence, 0.0)
    assert float((fresh_seq - seq).abs().max() / seq.abs().max()) < 1e-4
    torch.testing.assert_close(torch.tensor(record.answer.log_probs, dtype=torch.float64),
                               fresh.f_input, rtol=1e-4, atol=1e-4)


def test_cli_forced_answer_round_trips(tmp_path, capsys):
    out = tmp_path / "record.json"
    target = "Endocrine therapy with an aromatase inhibitor."
    code = main(["explain", CASE, "--target", target, "--method", "ig", "--steps", "8",
                 "--json", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Endocrine therapy" in printed and "Completeness error" in printed
    record = Explanation.load(out)
    assert record.answer.forced and record.answer.text == target
    assert record.attribution.completeness_error is not None
    assert json.loads(out.read_text()) == record.to_dict()


SHORT = "A 61-year-old woman has a 1.8 cm ER positive, HER2 negative breast carcinoma. Treatment?"
QUICK = {
    "feature-ablation": (None, ()),
    "shapley": (None, (("samples", "1"),)),
    "dig": (3, (("nbrs", "5"), ("upscale", "0"))),
    "udig": (3, (("nbrs", "5"), ("strategy", "maxcount"))),
    "sig": (1, ()),
    "heta": (None, (("samples", "1"),)),
    "grad-ellm": (None, (("layers", "every:3"),)),
    "ca-lig": (2, (("layers", "0,-1"),)),
    "flashtrace": (None, ()),
    "ifr": (None, (("sink", "predicting"), ("normalise", "content"))),
    "input-x-gradient": (None, ()),
}


@pytest.mark.parametrize("method", [*QUICK, "grad-ellm:exact"])
def test_every_method_on_the_embedded_model(embedded, method):
    """One real run each: finite, non-zero scores of the right shape, in a full record."""
    _, loaded = embedded
    name, _, mode = method.partition(":")
    steps, options = QUICK[name]
    if mode:
        options = (*options, ("mode", mode))
    request = ExplainRequest(SHORT, method=name, steps=steps, options=options,
                             target="Endocrine therapy.")
    record = explain(request, loaded)
    n, t = len(record.prompt.token_ids), len(record.answer.token_ids)
    per_token = torch.tensor(record.attribution.per_token)
    assert per_token.shape == (t, n) and torch.isfinite(per_token).all()
    seq = torch.tensor(record.attribution.sequence)
    mask = torch.tensor(record.prompt.attributable)
    assert torch.all(seq[~mask] == 0) and (seq[mask] != 0).sum() >= mask.sum() // 2
    assert record.method.name == name
    assert model_eager_free(loaded.model)
    assert Explanation.from_json(record.to_json()) == record


def model_eager_free(model) -> bool:
    """Methods that need eager attention give the model back as they found it."""
    return model.config._attn_implementation != "eager"


def test_a_gguf_is_read_with_its_own_tokenizer_only(embedded, tiny_model_folder, tmp_path,
                                                    monkeypatch):
    """A tokenizer.json (or config.json) beside a GGUF must not replace the file's own: a
    normalizer could turn "HER2 negative" into "HER2 positive" while the record says
    "negative". The cache entry it leaves is verified on load and rebuilt when altered."""
    from engine.models import CACHE_MANIFEST, _cache_is_intact, gguf_cache_path

    _, warm = embedded
    folder = tmp_path / "downloads"
    folder.mkdir()
    gguf = folder / embedded_gguf_path().name
    gguf.symlink_to(embedded_gguf_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        (folder / name).write_text((tiny_model_folder / name).read_text())
    monkeypatch.setenv("TOKENTRACE_CACHE_DIR", str(tmp_path / "fresh-cache"))
    hijacked = load_model(ModelRequest(str(gguf)))
    assert not hijacked.from_cache
    assert hijacked.info.tokenizer_sha256 == warm.info.tokenizer_sha256
    assert hijacked.info.template_sha256 == warm.info.template_sha256
    assert hijacked.info.parameters == warm.info.parameters  # not the tiny config's model
    entry = gguf_cache_path(hijacked.info.sha256)
    assert (entry / CACHE_MANIFEST).is_file()
    assert _cache_is_intact(entry, hijacked.info.sha256, TaskState())
    tokenizer = entry / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"lowercase": false', '"lowercase": true')
                         + " ")
    assert not _cache_is_intact(entry, hijacked.info.sha256, TaskState())


@pytest.mark.skipif(sys.platform == "win32", reason="kills a process with SIGKILL")
def test_a_killed_window_leaves_no_converter_running_and_no_partial_entry(tmp_path):
    # Before: the converter ran on for about 40 s after its parent was killed, and left the
    # dequantized model (517 MB) in a .partial folder of the cache for ever.
    import os
    import signal
    import subprocess
    import time

    import psutil

    cache = tmp_path / "cache"
    parent = subprocess.Popen(
        [sys.executable, "-c", "from engine.models import ModelRequest, load_model; "
         "load_model(ModelRequest('embedded'))"],
        env={**os.environ, "TOKENTRACE_CACHE_DIR": str(cache)},
        cwd=Path(__file__).resolve().parents[2])
    deadline = time.monotonic() + 60
    converter = []
    while not converter and time.monotonic() < deadline:
        time.sleep(0.2)
        converter = [child for child in psutil.Process(parent.pid).children()
                     if "engine.convert_gguf" in " ".join(child.cmdline())]
    assert converter, "the conversion did not start"
    while not any((cache / "gguf").glob(".partial-*/.source-*")):  # reading the GGUF now
        assert time.monotonic() < deadline, "the converter did not start reading the GGUF"
        time.sleep(0.2)
    time.sleep(1.0)  # well inside the conversion (about 25 s here)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    _, alive = psutil.wait_procs(converter, timeout=5)
    assert not alive, "the converter runs on without its parent"
    assert not list((cache / "gguf").iterdir())


def test_cancel_stops_a_first_gguf_load_within_a_second(tmp_path, monkeypatch):
    """Dequantizing runs in a child process: a cancel mid-conversion kills it and leaves no
    partial cache entry; the next load converts again and succeeds."""
    import threading
    import time

    from engine.errors import Cancelled

    monkeypatch.setenv("TOKENTRACE_CACHE_DIR", str(tmp_path / "cache"))

    class Watch(TaskState):
        converting = threading.Event()

        def progressed(self, stage, done, total):
            if (stage, done) == ("load", 1):  # hashed; the conversion starts now
                self.converting.set()

    state = Watch()
    outcome = {}

    def load():
        try:
            load_model(ModelRequest("embedded"), state)
        except Cancelled as exc:
            outcome["cancelled"] = time.perf_counter()
            outcome["error"] = exc

    thread = threading.Thread(target=load)
    thread.start()
    assert state.converting.wait(60)
    time.sleep(4.0)  # well inside the conversion (about 25 s here)
    pressed = time.perf_counter()
    state.cancel()
    thread.join(30)
    assert "cancelled" in outcome, "the load finished or failed instead of cancelling"
    assert outcome["cancelled"] - pressed < 1.0
    assert not list((tmp_path / "cache" / "gguf").iterdir())  # no partial entry is left


def test_a_copied_claim_rests_on_its_sentence_and_an_unrelated_one_is_flagged(embedded):
    """The embedded model copies a nonsense sentence from the case (it can only come from
    there) and then states a fact the case says nothing about."""
    from engine.claims import THRESHOLD, find_claims

    _, warm = embedded
    case = ("A 46-year-old woman presents with a breast mass. The core biopsy report reads: "
            "zebra quartz lantern mosaic. Staging CT shows no distant disease. Repeat the biopsy "
            "report word for word.")
    copied = "The core biopsy report reads: zebra quartz lantern mosaic."
    record = explain(ExplainRequest(case, target=f"{copied} Paris is the capital of France.",
                                    matrix=False, method="ifr"), warm)
    claims = find_claims(warm.model, warm.tokenizer, record)
    copy, unrelated = claims.claims
    assert copy.text == copied and unrelated.text == "Paris is the capital of France."
    source = [case[a:b] for a, b in claims.sentences].index(copied)
    assert max(range(len(copy.evidence)), key=copy.evidence.__getitem__) == source
    assert copy.grounded and copy.support > 10 * THRESHOLD
    assert dict(copy.drops)[source] > 20  # nats: without it the copy is all but impossible
    assert not unrelated.grounded and unrelated.support < THRESHOLD


def test_what_if_the_copied_word_changes_and_an_unrelated_word_goes(embedded):
    """The embedded model repeats the patient's name from the case: replacing the name changes
    the answer, removing an unrelated word does not."""
    from engine.whatif import Edit, what_if

    _, warm = embedded
    case = ("The patient's name is Zelda. She has a palpable breast mass. What is the "
            "patient's name?")
    record = explain(ExplainRequest(case, max_new_tokens=8, matrix=False, method="ifr"), warm)
    assert "Zelda" in record.answer.text
    replaced = what_if(warm.model, warm.tokenizer, record, [Edit("replace", "Zelda", "Maria")],
                       max_new_tokens=8)
    assert replaced.answer_changed and "Maria" in replaced.answer.text
    assert replaced.shift < -5 and not replaced.still_greedy
    unrelated = what_if(warm.model, warm.tokenizer, record, [Edit("remove", "palpable ")],
                        max_new_tokens=8)
    assert not unrelated.answer_changed and unrelated.still_greedy
    assert abs(unrelated.shift) < 1.0
