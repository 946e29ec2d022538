"""Attribution methods, registered by name. One method per module."""

from __future__ import annotations

from engine.defaults import DEFAULT_METHOD, second_opinion
from engine.errors import InvalidSettingsError
from engine.methods import (
    ca_lig,
    dig,
    grad_ellm,
    heta,
    ig,
    information_flow,
    input_x_gradient,
    perturbation,
    sig,
)
from engine.methods.base import AttributionInput, AttributionOutput, MethodSpec
from engine.methods.ig import integrated_gradients
from engine.methods.perturbation import feature_ablation, shapley

METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    ig.SPEC, perturbation.ABLATION_SPEC, perturbation.SHAPLEY_SPEC, dig.DIG_SPEC, dig.UDIG_SPEC,
    sig.SPEC, heta.SPEC, grad_ellm.SPEC, ca_lig.SPEC, information_flow.FLASHTRACE_SPEC,
    information_flow.IFR_SPEC, input_x_gradient.SPEC)}


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise InvalidSettingsError(
            f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


__all__ = ["DEFAULT_METHOD", "METHODS", "AttributionInput", "AttributionOutput", "MethodSpec",
           "feature_ablation", "get_method", "integrated_gradients", "second_opinion", "shapley"]
