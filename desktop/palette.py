"""The attribution colour scale, shared by the terminal, the GUI and the report.

Diverging and colour-blind-safe (the ends of ColorBrewer's RdBu): red pushed the answer's
probability up, blue pushed it down, near-white is neutral.
"""

from __future__ import annotations

NEGATIVE = (33, 102, 172)
POSITIVE = (178, 24, 43)
NEUTRAL = (247, 247, 247)
UNCOLOURED_BELOW = 0.05  # fraction of the scale under which a unit is left uncoloured
HIGH_COMPLETENESS_ERROR = 0.10  # above this, views suggest more integration steps


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
