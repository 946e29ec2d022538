"""``shapley``: Captum's ShapleyValueSampling over the case tokens (the shared Captum wiring is
:mod:`engine.methods._perturbation`)."""

from __future__ import annotations

from typing import Any

from engine.methods._perturbation import COMMON, shapley
from engine.methods.base import Cost, MethodSpec, Param, Size


def cost(size: Size, params: dict[str, Any]) -> Cost:
    return Cost(forwards=int(params.get("samples", 25)) * size.case + 1, backwards=0,
                tokens=size.prompt + size.answer)


SPEC = MethodSpec(
    name="shapley",
    description="Captum ShapleyValueSampling over case tokens (sampled permutations)",
    params=(*COMMON, Param("samples", 25, "random permutations")),
    cost_formula="samples x n_case + 1 forwards over n + T tokens",
    cost=cost, run=shapley)
