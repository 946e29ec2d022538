"""Shared fixtures: tiny real models, a tiny tokenizer and a real model folder."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before any QApplication exists
import pytest
import torch
from tiny import make_tiny_model, make_tiny_tokenizer

import engine  # noqa: F401  (offline switches before transformers)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep GGUF caches and digests of the test run away from the user's cache."""
    if "TOKENTRACE_CACHE_DIR" not in os.environ:
        os.environ["TOKENTRACE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture(params=["llama", "qwen2"])
def tiny_model(request, tiny_tokenizer):
    return make_tiny_model(request.param, len(tiny_tokenizer), torch.float64)


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory):
    """A real Hugging Face model folder (config, safetensors, tokenizer) of a tiny Llama."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    model = make_tiny_model("llama", len(make_tiny_tokenizer()), torch.float32)
    model.save_pretrained(folder, safe_serialization=True)
    make_tiny_tokenizer().save_pretrained(folder)
    return folder
