"""``feature-ablation``: Captum's FeatureAblation over the case tokens (the shared Captum
wiring is :mod:`engine.methods._perturbation`)."""

from __future__ import annotations

from typing import Any

from engine.methods._perturbation import COMMON, feature_ablation
from engine.methods.base import Cost, MethodSpec, Size


def cost(size: Size, params: dict[str, Any]) -> Cost:
    return Cost(forwards=size.case + 1, backwards=0, tokens=size.prompt + size.answer)


SPEC = MethodSpec(
    name="feature-ablation",
    description="Captum FeatureAblation: drop of log p when each case token is replaced",
    params=COMMON, cost_formula="n_case + 1 forwards over n + T tokens",
    cost=cost, run=feature_ablation)
