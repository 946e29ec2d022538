"""A bfloat16 twin of a float32 model, for work whose figures tolerate rounding: the reliability
check's perturbed prompts, a statistic compared against chance.

On a CPU that multiplies bfloat16 natively (AMX or AVX-512 BF16) the twin runs those prompts
about twice as fast as float32, where float32 matrix products are already at the cores' peak
(docs/benchmarks.md, "Time goals": the demo case's perturbed prompts). The answer, the
explanation and every figure the user can compare with a reference implementation stay in the
model's own precision; the check records which precision it ran in.

The twin's parameters are the model's, rounded (half the float32 model's bytes); its buffers,
such as rotary frequencies, are copied as they are, in float32, since rounding them would shift
every position's angle. It is made once per model and goes with it.
"""

from __future__ import annotations

import copy
import threading
import weakref
from typing import Any

import psutil
import torch

from engine.defaults import CHECK_PRECISIONS

TWIN = "bfloat16-twin"  # the precision a check records when it ran in the twin
TWIN_MEMORY_SHARE = 4  # the twin may take at most a quarter of the memory available

_twins: weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (elsewhere it is emulated, and slower).
    The probes are private to torch: a build without them counts as no."""
    probes = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported",
                                                          "_is_avx512_bf16_supported"))
    return any(bool(probe()) for probe in probes if probe is not None)


def wants_twin(dtype: torch.dtype, device: torch.device, twin_bytes: int, available: int,
               native: bool) -> bool:
    """The "auto" rule: a float32 model on a CPU with native bfloat16, when the twin fits in a
    quarter of the memory available. A GPU runs the model's own precision: its float32 is not
    at the floor a CPU's is, and its memory is the scarcer."""
    return (dtype == torch.float32 and device.type == "cpu" and native
            and twin_bytes * TWIN_MEMORY_SHARE <= available)


def scoring_model(model: Any, precision: str = "auto") -> tuple[Any, str]:
    """The model to run rounding-tolerant forwards with, and the name of its precision: the
    model's own dtype, or :data:`TWIN`."""
    if precision not in CHECK_PRECISIONS:
        raise ValueError(f"unknown check precision {precision!r}; choose one of "
                         f"{', '.join(CHECK_PRECISIONS)}")
    first = next(model.parameters())
    own = str(first.dtype).removeprefix("torch.")
    if precision == "model":
        return model, own
    twin_bytes = 2 * sum(p.numel() for p in model.parameters())
    if not wants_twin(first.dtype, first.device, twin_bytes, psutil.virtual_memory().available,
                      native_bfloat16()):
        return model, own
    return bfloat16_twin(model), TWIN


def bfloat16_twin(model: torch.nn.Module) -> torch.nn.Module:
    """The model with its parameters in bfloat16 (made once; tied weights stay tied)."""
    with _lock:
        twin = _twins.get(model)
        if twin is None:
            # Each parameter maps to its rounded copy, so deepcopy never copies the float32
            # weights (a tied weight is one object, so one copy); everything else is copied.
            memo: dict[int, Any] = {
                id(p): torch.nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False)
                for p in model.parameters()}
            twin = copy.deepcopy(model, memo)
            for module in twin.modules():  # a model at rest has none; never copy a run's
                for hooks in (module._forward_pre_hooks, module._forward_hooks,
                              module._backward_pre_hooks, module._backward_hooks):
                    hooks.clear()
            head = twin.get_output_embeddings() if hasattr(twin, "get_output_embeddings") \
                else None
            if head is not None:
                # The answer's positions are sliced out of the hidden states before the output
                # layer; on that non-contiguous 3-D input a bfloat16 linear copies the whole
                # weight per batch row (0.35 s per forward for the embedded model).
                head.register_forward_pre_hook(_contiguous)
            _twins[model] = twin
        return twin


def _contiguous(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    if not args or not isinstance(args[0], torch.Tensor):
        return None  # called with keywords: left as it is
    return (args[0].contiguous(), *args[1:])
