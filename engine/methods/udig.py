"""``udig``: Uniform Discretized Integrated Gradients (UDIG); the path machinery is in
:mod:`engine.methods._discretized`."""

from __future__ import annotations

from engine.methods._discretized import FORMULA, PARAMS, cost, udig
from engine.methods.base import MethodSpec

SPEC = MethodSpec(
    name="udig", description="Uniform Discretized IG: word anchors near uniform points on the line",
    params=PARAMS, cost_formula=FORMULA, cost=cost, run=udig)
