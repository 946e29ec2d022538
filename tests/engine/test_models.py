"""Model loading from a Hugging Face folder and GGUF files, and its errors."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import pytest

from engine.errors import InvalidSettingsError, ModelLoadError
from engine.models import ModelRequest, load_model, resolve_device, resolve_dtype


def test_loads_a_hugging_face_folder(tiny_model_folder):
    loaded = load_model(ModelRequest(str(tiny_model_folder)))
    weights = (tiny_model_folder / "model.safetensors").read_bytes()
    assert loaded.info.sha256 == hashlib.sha256(weights).hexdigest()
    assert loaded.info.device == "cpu" and loaded.info.dtype == "float32"
    assert loaded.info.parameters == sum(p.numel() for p in loaded.model.parameters()) > 1000
    assert loaded.context_length == 256
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.tokenizer.is_fast


def _copy_without(folder, tmp_path, *patterns):
    target = tmp_path / "model"
    shutil.copytree(folder, target)
    for pattern in patterns:
        for path in target.glob(pattern):
            path.unlink()
    return target


def test_folder_errors(tiny_model_folder, tmp_path):
    with pytest.raises(ModelLoadError, match="model not found"):
        load_model(ModelRequest(str(tmp_path / "nowhere")))
    no_config = _copy_without(tiny_model_folder, tmp_path, "config.json")
    with pytest.raises(ModelLoadError, match=r"has no config\.json"):
        load_model(ModelRequest(str(no_config)))
    shutil.rmtree(no_config)
    pickled = _copy_without(tiny_model_folder, tmp_path, "*.safetensors")
    (pickled / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors weights"):
        load_model(ModelRequest(str(pickled)))
    shutil.rmtree(pickled)
    broken = _copy_without(tiny_model_folder, tmp_path)
    (broken / "config.json").write_text("{ not json")
    with pytest.raises(ModelLoadError, match=r"cannot read .*config\.json"):
        load_model(ModelRequest(str(broken)))
    config = json.loads((tiny_model_folder / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(ModelLoadError, match="needs custom code"):
        load_model(ModelRequest(str(broken)))
    (broken / "config.json").write_text(json.dumps(config))
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(ModelLoadError, match="cannot load the model"):
        load_model(ModelRequest(str(broken)))


def test_gguf_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENTRACE_CACHE_DIR", str(tmp_path / "cache"))
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(ModelLoadError, match="is not a GGUF file"):
        load_model(ModelRequest(str(not_gguf)))
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 64)
    with pytest.raises(ModelLoadError) as refused:
        load_model(ModelRequest(str(truncated)))
    # Said once, naming the user's file, not the link the converter reads it through.
    assert str(refused.value).count("cannot read GGUF file") == 1
    assert str(truncated) in str(refused.value) and ".source-" not in str(refused.value)
    assert not list((tmp_path / "cache" / "gguf").iterdir())  # nothing left of the attempt


def test_partial_cache_entries_of_gone_processes_are_swept(tmp_path):
    # Before: a window killed mid-conversion left its dequantized model (517 MB for the embedded
    # one) in a .partial folder of the cache for ever.
    import os
    import subprocess
    import sys
    import time

    from engine.models import ABANDONED_AFTER_S, SILENT_AFTER_S, _sweep_abandoned

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    entries = {name: tmp_path / name for name in (
        f".partial-{gone.pid}-abc", f".partial-{gone.pid}-fresh", f".partial-{os.getpid()}-def",
        ".partial-oldstyle1", ".partial-oldstyle2", ".partial-12345678",
        "b179c9523d0e6a0f-e6c8b2c2260ef6d1")}
    for folder in entries.values():
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 100)
    silent, stale = time.time() - SILENT_AFTER_S - 5, time.time() - ABANDONED_AFTER_S - 60
    for name, when in ((f".partial-{gone.pid}-abc", silent), (f".partial-{os.getpid()}-def",
                                                              stale),
                       (".partial-oldstyle1", stale), (".partial-12345678", silent)):
        os.utime(entries[name], (when, when))
    _sweep_abandoned(tmp_path)
    # Kept: a converter that touched its folder lately (whose process this one may not see),
    # a process still running, an earlier version's entry younger than a day.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".partial-{gone.pid}-fresh", f".partial-{os.getpid()}-def", ".partial-oldstyle2",
         ".partial-12345678", "b179c9523d0e6a0f-e6c8b2c2260ef6d1"])


def test_device_and_dtype_choices():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(InvalidSettingsError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(InvalidSettingsError, match="unknown dtype 'int8'"):
        resolve_dtype("int8", resolve_device("cpu"))
    assert str(resolve_dtype("auto", resolve_device("cpu"))) == "torch.float32"


def test_a_gguf_missing_a_tensor_is_refused_not_run_on_random_weights(tmp_path, monkeypatch):
    # Before: loaded with that weight randomly initialised, cached so, and explained (exit 0).
    from tiny import make_tiny_gguf

    monkeypatch.setenv("TOKENTRACE_CACHE_DIR", str(tmp_path / "cache"))
    whole, holed = tmp_path / "whole.gguf", tmp_path / "holed.gguf"
    make_tiny_gguf(whole)
    make_tiny_gguf(holed, leave_out=("blk.1.attn_q.weight",))
    loaded = load_model(ModelRequest(str(whole)))
    assert loaded.model.config.num_hidden_layers == 2
    with pytest.raises(ModelLoadError, match=re.escape(
            "1 missing (e.g. model.layers.1.self_attn.q_proj.weight) weight tensors")):
        load_model(ModelRequest(str(holed)))
    assert len(list((tmp_path / "cache").rglob("config.json"))) == 1  # the whole one only


def test_a_gguf_declaring_a_far_bigger_model_is_refused_before_allocating(tmp_path,
                                                                           monkeypatch):
    # Before: the declared model was allocated first (4.7 GB for a feed-forward width of 3
    # million in a 14 MB file; 3,000 layers still converting after 8 minutes).
    from tiny import make_tiny_gguf

    monkeypatch.setenv("TOKENTRACE_CACHE_DIR", str(tmp_path / "cache"))
    for declare, message in (({"llama.block_count": 3000}, "asks for 3000 layers; refused"),
                             # Before: layer 1's tensors were dropped without a word.
                             ({"llama.block_count": 1}, re.escape(
                                 "declared.gguf: it holds tensors of layer 1 (blk.1.*) but its "
                                 "metadata declares 1 layer:")),
                             ({"llama.feed_forward_length": 3_000_000},
                              "its metadata asks for 1,155,170,624")):
        path = tmp_path / "declared.gguf"
        make_tiny_gguf(path, declare=declare)
        with pytest.raises(ModelLoadError, match=message):
            load_model(ModelRequest(str(path)))


def test_a_folders_generation_config_never_changes_the_greedy_answer(tiny_model_folder,
                                                                      tmp_path):
    # Before: suppress_tokens (or min_new_tokens, penalties) in generation_config.json changed
    # the "greedy" answer with exit 0, and an ordinary word named as end of text cut it short.
    from engine.explain import ExplainRequest, explain

    request = ExplainRequest("52 year old woman , ER positive .", max_new_tokens=5, matrix=False)
    plain = explain(request, load_model(ModelRequest(str(tiny_model_folder))))
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_folder, folder)
    first = plain.answer.token_ids[0]
    (folder / "generation_config.json").write_text(json.dumps(
        {"suppress_tokens": [first], "min_new_tokens": 5, "repetition_penalty": 3.0,
         "begin_suppress_tokens": [first], "eos_token_id": 2}))
    loaded = load_model(ModelRequest(str(folder)))
    assert explain(request, loaded).answer.token_ids == plain.answer.token_ids
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [first]}))
    with pytest.raises(ModelLoadError, match=f"names token {first} as an end of text"):
        load_model(ModelRequest(str(folder)))


@pytest.mark.parametrize(("change", "message"), [
    # Before: "index 0 is out of bounds...", "couldn't find storage object Float8_e4m3fnStorage",
    # "module 'torch' has no attribute 'weird'", or a negative rope factor accepted silently.
    ({"vocab_size": 0}, "vocab_size 0 is not a positive whole number"),
    ({"dtype": "float8_e4m3fn"}, "dtype 'torch.float8_e4m3fn' is not one TokenTrace reads"),
    ({"dtype": "weird"}, "is its dtype one of float32"),
    ({"rope_scaling": {"rope_type": "linear", "factor": -1}},
     "the rope scaling factor -1 is not a positive number"),
])
def test_config_values_no_model_has_are_said_in_its_terms(tiny_model_folder, tmp_path, change,
                                                         message):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ModelLoadError, match=re.escape(message)):
        load_model(ModelRequest(str(folder)))
