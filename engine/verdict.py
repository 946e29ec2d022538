"""The reliability badge's verdict from its numbers: pure, so that a record opened from a file
can be checked against it (engine/record.py) and the check itself decide (engine/reliability.py).

``strong`` when the explanation beats chance on comprehensiveness and on sufficiency, its
comprehensiveness is at least twice chance's, and a second method agrees (rank correlation at
least 0.3); ``weak`` when it does not beat chance on comprehensiveness; ``fair`` otherwise.
Beating chance means by at least 10% of chance's value, so a tie within noise is no win.
"""

from __future__ import annotations

VERDICTS = ("strong", "fair", "weak")
STRONG_RATIO = 2.0
AGREEMENT = 0.3
MARGIN = 0.1  # "better than random" means better by at least 10% of random's value
# A close call, on which the check draws more random rankings: comprehensiveness within 10% of
# a threshold (one antithetic pair's chance varies by about that much), sufficiency within 2.5%
# (its chance varies about a quarter as much).
CLOSE, CLOSE_SUFF = 0.10, 0.025


def removes_more(comp: float, chance_comp: float) -> bool:
    return comp > chance_comp + MARGIN * abs(chance_comp)


def keeps_better(suff: float, chance_suff: float) -> bool:
    return suff < chance_suff - MARGIN * abs(chance_suff)


def verdict_of(comp: float, chance_comp: float, suff: float, chance_suff: float,
               rho: float) -> str:
    """``strong``, ``fair`` or ``weak``; see the module docstring."""
    if not removes_more(comp, chance_comp):
        return "weak"
    if keeps_better(suff, chance_suff) and comp >= STRONG_RATIO * max(chance_comp, 1e-12) \
            and rho >= AGREEMENT:
        return "strong"
    return "fair"


def close_call(comp: float, chance_comp: float, suff: float, chance_suff: float,
               rho: float) -> bool:
    """Whether more random rankings could change the verdict: comprehensiveness within
    CLOSE of a threshold that decides it (beating chance; twice chance's when the second
    method agrees), or sufficiency within CLOSE_SUFF of beating chance's when the verdict could
    be strong."""
    def near(value: float, threshold: float, band: float) -> bool:
        return abs(value - threshold) < band * abs(threshold)

    if near(comp, chance_comp + MARGIN * abs(chance_comp), CLOSE):
        return True
    if rho < AGREEMENT:  # fair or weak, whatever the rest
        return False
    return (near(comp, STRONG_RATIO * chance_comp, CLOSE)
            or near(suff, chance_suff - MARGIN * abs(chance_suff), CLOSE_SUFF))
