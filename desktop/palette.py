"""The attribution colour scale, shared by the terminal, the GUI and the report.

Diverging and colour-blind-safe (the ends of ColorBrewer's RdBu): red pushed the answer's
probability up, blue pushed it down, near-white is neutral.
"""

from __future__ import annotations

from engine.methods import METHODS

NEGATIVE = (33, 102, 172)
POSITIVE = (178, 24, 43)
NEUTRAL = (247, 247, 247)
UNCOLOURED_BELOW = 0.05  # fraction of the scale under which a unit is left uncoloured
HIGH_COMPLETENESS_ERROR = 0.10  # above this, views suggest more integration steps


def legend_words(method: str) -> str:
    """What the colours mean for ``method``'s scores, in one line."""
    spec = METHODS.get(method)
    if spec is not None and not spec.signed:
        return ("red: what the answer drew on (darker: more) · shares of information flow, "
                "with no direction")
    return "red: pushed toward the answer · blue: pushed against it"


def blend(score: float, scale: float) -> tuple[int, int, int]:
    """Background colour for ``score`` on a symmetric scale of +/- ``scale``."""
    if scale <= 0:
        return NEUTRAL
    weight = max(-1.0, min(1.0, score / scale))
    end = POSITIVE if weight > 0 else NEGATIVE
    w = abs(weight)
    r, g, b = (round(n + (e - n) * w) for n, e in zip(NEUTRAL, end, strict=True))
    return r, g, b


def text_colour(score: float, scale: float) -> str:
    """Black on light backgrounds, white on dark ones."""
    return "white" if scale > 0 and abs(score) > 0.55 * scale else "black"


def completeness_hint(params: dict, error: float, steps_flag: str | None = None) -> str:
    """What to do about a completeness error, in words ("" when nothing is needed).

    Converged IG says how many points it used and whether its budget ran out; a fixed rule with
    a high error suggests twice the points (``steps_flag``, e.g. ``--steps``, names the setting
    where the view has one).
    """
    if params.get("integration") == "adaptive-simpson":
        used = f" after {params.get('points')} points"
        if params.get("converged"):
            return f" (converged{used})"
        return (f" (the budget ran out{used} before the {100 * params.get('target_error', 0):.0f}%"
                " target; raise max_steps)")
    steps = params.get("steps")
    if error > HIGH_COMPLETENESS_ERROR and steps:
        more = f"{steps_flag} {2 * steps}" if steps_flag else f"{2 * steps} steps"
        return f" (high: the path integral has not converged; try {more})"
    if error > HIGH_COMPLETENESS_ERROR:
        return " (high: more integration steps would make the attribution more faithful)"
    return ""
