"""``dig``: Discretized Integrated Gradients (Sanyal & Ren 2021); the path machinery is in
:mod:`engine.methods._discretized`."""

from __future__ import annotations

from engine.methods._discretized import FORMULA, PARAMS, cost, dig
from engine.methods.base import MethodSpec

SPEC = MethodSpec(
    name="dig", description="Discretized IG: a monotone path through neighbouring words",
    params=PARAMS, cost_formula=FORMULA, cost=cost, run=dig)
