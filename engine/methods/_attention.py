"""Reading attention from inside a decoder: eager attention on demand, and the per-layer
tensors (projections, probabilities, head outputs) that attention-based methods need.

Works on Hugging Face decoders whose blocks hold ``self_attn`` with ``q_proj``, ``k_proj``,
``v_proj`` and ``o_proj`` (Llama, Qwen2, Mistral, SmolLM and their kin). Grouped-query attention
is explicit: query head h reads key/value head h // (heads / kv_heads).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from engine.errors import InvalidSettingsError
from engine.methods.base import decoder_layers


@dataclass(frozen=True)
class HeadLayout:
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    def expand_kv(self, states: torch.Tensor) -> torch.Tensor:
        """[B, L, kv_heads * head_dim] -> [B, L, heads, head_dim], query head order."""
        b, length = states.shape[:2]
        per_kv = states.view(b, length, self.kv_heads, self.head_dim)
        return per_kv.repeat_interleave(self.group, dim=2)


def head_layout(model: nn.Module) -> HeadLayout:
    """The head geometry of ``model`` (or of one attention block: it carries the config too)."""
    config = model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return HeadLayout(heads, kv_heads, head_dim)


def attention_module(layer: nn.Module) -> nn.Module:
    attn = getattr(layer, "self_attn", None)
    if attn is None or not all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj",
                                                          "o_proj")):
        raise InvalidSettingsError(
            f"{type(layer).__name__} has no q/k/v/o attention projections; this method needs "
            "a Llama-style decoder")
    return attn


def check_layers(spec: Any) -> None:
    """Raise InvalidSettingsError for a ``layers`` value of no possible form (before a model
    loads; whether its indices exist is checked against the model's blocks when it runs)."""
    text = str(spec).strip().lower()
    if text in ("last", "all"):
        return
    try:  # only the form: how many blocks there are is known when the model runs
        if text.startswith("every:"):
            if int(text.removeprefix("every:")) >= 1:
                return
        elif [int(part) for part in text.split(",") if part.strip()]:
            return
    except ValueError:
        pass
    raise InvalidSettingsError(f"layers {spec!r}: use last, all, every:K or block indices "
                               "separated by commas, like -1,-2")


def parse_layers(spec: str | int | Sequence[int], count: int) -> list[int]:
    """``last``, ``all``, ``every:K`` (K evenly spaced blocks, the last included) or a comma
    list of indices (negative counts from the end); sorted, each once."""
    text = str(spec).strip().lower()
    if text == "last":
        chosen = [count - 1]
    elif text == "all":
        chosen = list(range(count))
    elif text.startswith("every:"):
        try:
            k = int(text.removeprefix("every:"))
        except ValueError:
            k = 0
        if not 1 <= k <= count:
            raise InvalidSettingsError(f"layers {spec!r}: K must be from 1 to {count}")
        chosen = [round((count - 1) * (i + 1) / k) for i in range(k)] if k > 1 else [count - 1]
    else:
        try:
            chosen = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            chosen = []
        if not chosen or any(not -count <= i < count for i in chosen):
            raise InvalidSettingsError(
                f"layers {spec!r}: use last, all, every:K or indices from {-count} to "
                f"{count - 1}, separated by commas")
        chosen = [i % count for i in chosen]
    return sorted(set(chosen))


@contextlib.contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Run attention as explicit softmax(QK^T) V, so its probabilities exist (and have second
    derivatives); the model's own implementation is restored afterwards."""
    previous = model.config._attn_implementation
    if previous == "eager":
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


@dataclass
class LayerTensors:
    """What one block's attention computed in the last forward (batch first)."""

    q: torch.Tensor | None = None  # q_proj output [B, L, heads * head_dim], before RoPE
    k: torch.Tensor | None = None  # k_proj output [B, L, kv_heads * head_dim]
    v: torch.Tensor | None = None  # v_proj output [B, L, kv_heads * head_dim]
    heads_out: torch.Tensor | None = None  # o_proj input: concatenated head outputs
    out: torch.Tensor | None = None  # attention output after o_proj [B, L, d]
    probs: torch.Tensor | None = None  # [B, heads, L, L] (eager attention only)


@dataclass
class AttentionCapture:
    layers: list[int]
    tensors: dict[int, LayerTensors] = field(default_factory=dict)


@contextlib.contextmanager
def capture_attention(model: nn.Module, layers: Sequence[int]) -> Iterator[AttentionCapture]:
    """Record :class:`LayerTensors` of the given blocks on every forward inside the block."""
    capture = AttentionCapture(list(layers))
    blocks = decoder_layers(model)
    handles = []

    def keep(index: int, name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            setattr(capture.tensors[index], name, output)
        return hook

    for index in capture.layers:
        attn = attention_module(blocks[index])
        capture.tensors[index] = LayerTensors()
        for name in ("q", "k", "v"):
            handles.append(getattr(attn, f"{name}_proj").register_forward_hook(keep(index, name)))

        def before_o(module: nn.Module, args: Any, index: int = index) -> None:
            capture.tensors[index].heads_out = args[0]

        def after_attn(module: nn.Module, args: Any, output: Any, index: int = index) -> None:
            capture.tensors[index].out = output[0]
            capture.tensors[index].probs = output[1] if len(output) > 1 else None

        handles.append(attn.o_proj.register_forward_pre_hook(before_o))
        handles.append(attn.register_forward_hook(after_attn))
    try:
        yield capture
    finally:
        for handle in handles:
            handle.remove()
