"""Attribution methods, registered by name. One method per module."""

from __future__ import annotations

from engine.errors import InvalidSettingsError
from engine.methods.base import AttributionInput, AttributionOutput, MethodSpec
from engine.methods.ig import SPEC as _IG
from engine.methods.ig import integrated_gradients
from engine.methods.perturbation import ABLATION_SPEC, SHAPLEY_SPEC, feature_ablation, shapley

METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (_IG, ABLATION_SPEC, SHAPLEY_SPEC)}


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise InvalidSettingsError(
            f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


__all__ = ["METHODS", "AttributionInput", "AttributionOutput", "MethodSpec",
           "feature_ablation", "get_method", "integrated_gradients", "shapley"]
