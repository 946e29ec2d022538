"""Defaults chosen by evidence, importable without torch (the command line reads them at start).

The window's method is the most faithful one that meets the time goals on a laptop CPU
(docs/evaluation.md, docs/benchmarks.md); the reliability badge's second opinion is the most
faithful cheap method of another family, so that agreement between the two means something.
"""

from __future__ import annotations

# IFR (FlashTrace's single-span flow, no hops): on the 20 demo cases the most faithful of the
# single-pass methods on five of seven metrics, and the only kind that meets the time goals.
DEFAULT_METHOD = "ifr"
SECOND_OPINION = {"flashtrace": "input-x-gradient", "ifr": "input-x-gradient"}
SECOND_OPINION_DEFAULT = "ifr"


def second_opinion(name: str) -> str:
    """The cheap method the reliability check compares an explanation by ``name`` with."""
    return SECOND_OPINION.get(name, SECOND_OPINION_DEFAULT)


# The reliability check's word deletions: "auto" in a bfloat16 twin of a float32 model where the
# CPU multiplies bfloat16 natively (engine/precision.py), "model" in the model's own precision.
# On the 20 demo cases the twin gave the same verdicts in about half the time (docs/evaluation.md).
CHECK_PRECISIONS = ("auto", "model")

# The evaluation's AOPC levels: comprehensiveness and sufficiency average the answer's probability
# drop with the top k% of the case deleted or kept alone, over these k (METHODS.md).
PERCENTS = (1, 5, 10, 20, 50)
# The reliability check's levels: all five. Fewer would be cheaper (three of them, 1, 5 and 50%,
# run 0.59x the perturbed prompts' tokens), but the three that best matched the verdict of five
# levels and 12 random rankings on the 20 demo cases (78 of 80 checks against 75) matched it less
# often on 16 held-out cases (47 of 64 against 54): docs/evaluation.md, "how many deletion levels".
CHECK_PERCENTS = PERCENTS
