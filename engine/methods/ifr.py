"""``ifr``: information flow routes to the answer span in one forward pass (FlashTrace's
single-span IFR: no hops, no stop-token filtering); TokenTrace's default. The shared single-pass
machinery is :mod:`engine.methods._information_flow`."""

from __future__ import annotations

from engine.methods._information_flow import PARAMS, cost, information_flow
from engine.methods.base import MethodSpec, Param

SPEC = MethodSpec(
    name="ifr",
    description="Information flow routes to the answer span in one forward pass (FlashTrace's "
                "single-span IFR; no hops, no stop-token filtering)",
    params=(Param("hops", 0, "hops through the answer's earlier tokens"),
            Param("stop_tokens", False, "skip ',' '.' and blank tokens"),
            *PARAMS),
    cost_formula="1 forward over n + T tokens",
    cost=cost,
    run=information_flow,
    reuses_prompt_cache=True,
    signed=False,
)
