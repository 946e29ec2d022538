"""The reliability badge's verdict and sentence from its figures: pure, so that the check
(engine/reliability.py) and a record opened from a file (engine/record.py) say the same.

``strong`` when the explanation beats chance on comprehensiveness and on sufficiency, its
comprehensiveness is at least twice chance's, and a second method agrees (rank correlation at
least 0.3); ``weak`` when it does not beat chance on comprehensiveness; ``fair`` otherwise.
Beating chance means by at least 10% of chance's value, so a tie within noise is no win; on
comprehensiveness also by at least ``FLOOR`` of the answer's probability (AOPC, on average over
the levels; sufficiency has no floor), so that on
an answer the model is all but certain of (every deletion moves it by a hair) a ratio of two
noises decides nothing; for the same reason a strong verdict needs comprehensiveness of at least
``FLOOR`` above chance and above zero. The floor was chosen so that it changes none of the
check's measured agreement: re-analysing the stored drops (``benchmarks.check_levels --reuse``,
with and without ``--held-out``, and ``benchmarks.reliability_draws --reuse``) gives the same
figures for the check's design (75 of 80 and 54 of 64 checks; a floor of 0.01 gave 52 of 64).
"""

from __future__ import annotations

VERDICTS = ("strong", "fair", "weak")
STRONG_RATIO = 2.0
AGREEMENT = 0.3
MARGIN = 0.1  # "better than random" means better by at least 10% of random's value
FLOOR = 0.003  # ... and by at least this much (AOPC: a mean fall of the answer's probability)
# A close call, on which the check draws more random rankings for the figure that is close:
# comprehensiveness within 10% of a threshold (one antithetic pair's chance varies by about that
# much), sufficiency within 2.5% (its chance varies about a quarter as much), at the five
# deletion levels the check takes.
CLOSE, CLOSE_SUFF = 0.10, 0.025


def beats_chance_at(chance_comp: float) -> float:
    """The comprehensiveness above which an explanation removes more than random words."""
    return chance_comp + max(MARGIN * abs(chance_comp), FLOOR)


def strong_at(chance_comp: float) -> float:
    """The comprehensiveness from which a verdict can be strong."""
    return max(STRONG_RATIO * chance_comp, chance_comp + FLOOR, FLOOR)


def keeps_at(chance_suff: float) -> float:
    """The sufficiency below which keeping the top words preserves more than random words."""
    return chance_suff - MARGIN * abs(chance_suff)


def removes_more(comp: float, chance_comp: float) -> bool:
    return comp > beats_chance_at(chance_comp)


def keeps_better(suff: float, chance_suff: float) -> bool:
    return suff < keeps_at(chance_suff)


def verdict_of(comp: float, chance_comp: float, suff: float, chance_suff: float,
               rho: float) -> str:
    """``strong``, ``fair`` or ``weak``; see the module docstring."""
    if not removes_more(comp, chance_comp):
        return "weak"
    if keeps_better(suff, chance_suff) and comp >= strong_at(chance_comp) and rho >= AGREEMENT:
        return "strong"
    return "fair"


def close_figures(comp: float, chance_comp: float, suff: float, chance_suff: float,
                  rho: float) -> tuple[bool, bool]:
    """Which of chance's two figures more random rankings could move across a threshold that
    decides the verdict: (comprehensiveness, sufficiency).

    Comprehensiveness is close within CLOSE of beating chance, or, when strong is within reach
    (the second method agrees, and comprehensiveness is near twice chance's or above), within
    CLOSE of the strong threshold; sufficiency is close only when strong is within reach, within
    CLOSE_SUFF of beating chance's. Far from strong, sufficiency decides nothing (fair or weak
    follow from comprehensiveness alone), so its chance is not drawn again."""
    def near(value: float, threshold: float, band: float) -> bool:
        return abs(value - threshold) < band * abs(threshold)

    strong_in_reach = rho >= AGREEMENT and comp >= strong_at(chance_comp) * (1 - CLOSE)
    comp_close = (near(comp, beats_chance_at(chance_comp), CLOSE)
                  or (strong_in_reach and near(comp, strong_at(chance_comp), CLOSE)))
    return comp_close, strong_in_reach and near(suff, keeps_at(chance_suff), CLOSE_SUFF)


def close_call(comp: float, chance_comp: float, suff: float, chance_suff: float,
               rho: float) -> bool:
    """Whether more random rankings could change the verdict (either of
    :func:`close_figures`)."""
    return any(close_figures(comp, chance_comp, suff, chance_suff, rho))


def summary_of(comp: float, chance_comp: float, suff: float, chance_suff: float, rho: float,
               second: str) -> str:
    """The badge's sentence: the verdict in plain words, with the figures."""
    if chance_comp > 0 and comp > 0 and abs(comp - chance_comp) >= FLOOR:
        removal = (f"removing the words it ranks highest lowers the answer's probability "
                   f"{comp / chance_comp:.1f}x as much as removing random words")
    else:  # a ratio of two changes this small (or of opposite signs) says nothing
        removal = ("removing the words it ranks highest lowers the answer's probability "
                   f"by {comp:+.4f}, against {chance_comp:+.4f} for random words")
        if abs(comp - chance_comp) < FLOOR:
            removal += f" (a difference below {FLOOR}: too small to tell them apart)"
    keeping = ("keeping only them preserves the answer better than random words"
               if keeps_better(suff, chance_suff)
               else "keeping only them preserves the answer no better than random words")
    agreement = ("agrees" if rho >= 0.5 else "partly agrees" if rho >= AGREEMENT
                 else "does not agree")
    lead = {"strong": "Trustworthy here", "fair": "Use with care",
            "weak": "Do not rely on this explanation"}[
        verdict_of(comp, chance_comp, suff, chance_suff, rho)]
    return (f"{lead}: {removal}; {keeping}; it {agreement} with {second} "
            f"(rank correlation {rho:.2f}).")


def not_checkable(params: dict) -> str | None:
    """Why an explanation made with these method parameters cannot be checked, or None.

    The check deletes words and watches the whole answer's probability, and compares with a
    second method's explanation of the whole answer: an explanation of a few answer tokens
    (``span``) would be judged on what it does not claim to explain."""
    span = str(params.get("span", "all")).strip().lower()
    if span != "all":
        return (f"the reliability check judges explanations of the whole answer; this one "
                f"explains answer tokens {span} only (span={span})")
    return None
