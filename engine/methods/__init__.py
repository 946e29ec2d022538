"""Attribution methods, registered by name: one public module per method name (its SPEC), the
shared machinery in private modules (``_paths``, ``_attention``, ``_information_flow``,
``_perturbation``, ``_discretized``)."""

from __future__ import annotations

from engine.defaults import DEFAULT_METHOD, second_opinion
from engine.errors import InvalidSettingsError
from engine.methods import (
    ca_lig,
    dig,
    feature_ablation,
    flashtrace,
    grad_ellm,
    heta,
    ifr,
    ig,
    input_x_gradient,
    shapley,
    sig,
    udig,
)
from engine.methods.base import AttributionInput, AttributionOutput, MethodSpec
from engine.methods.ig import integrated_gradients

METHODS: dict[str, MethodSpec] = {module.SPEC.name: module.SPEC for module in (
    ig, feature_ablation, shapley, dig, udig, sig, heta, grad_ellm, ca_lig, flashtrace, ifr,
    input_x_gradient)}


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise InvalidSettingsError(
            f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


__all__ = ["DEFAULT_METHOD", "METHODS", "AttributionInput", "AttributionOutput", "MethodSpec",
           "get_method", "integrated_gradients", "second_opinion"]
