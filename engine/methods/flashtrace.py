"""``flashtrace``: information flow to the whole answer with hops through the answer's own
tokens and FlashTrace's stop-token filtering, as the package does it (ICML 2026). The shared
single-pass machinery is :mod:`engine.methods._information_flow`."""

from __future__ import annotations

from engine.methods._information_flow import PARAMS, cost, information_flow
from engine.methods.base import MethodSpec, Param

SPEC = MethodSpec(
    name="flashtrace",
    description="FlashTrace: information flow to the whole answer in one forward pass, "
                "with hops through the answer's own tokens (no backward)",
    params=(Param("hops", 1, "hops through the answer's earlier tokens (0: plain IFR)"),
            Param("stop_tokens", True, "skip ',' '.' and blank tokens, as FlashTrace does"),
            *PARAMS),
    cost_formula="1 forward over n + T tokens; per hop about 1/8 of a forward",
    cost=cost,
    run=information_flow,
    reuses_prompt_cache=True,
    signed=False,
)
