"""Model pre-labels: a score in [0, 1] for each of the 12 FFE categories, from a face's 52
MediaPipe blendshapes.

The blendshapes are ARKit's, which follow FACS action units closely, so each category is written
as the action units of its prototype (Ekman & Friesen's EMFACS for the six basic emotions; for the
other six, the facial signs the FFE paper's annotation prompt describes). Each action unit is read
from its blendshapes; a category's raw score is the weighted mean of its units, with weights
summing to 1, so a full prototype scores 1. The scale is then stretched by `GAIN` (blendshapes
rarely reach 1 all together) and clipped to [0, 1].

These scores are the annotators' starting point (Label Studio predictions) and the labels of the
embedded default when no annotation server is configured (`affect_scores` with source `model`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from storage.schemas import CATEGORIES

MODEL_VERSION = "blendshapes-facs-v1"
GAIN = 1.6

Blend = Mapping[str, float]


def _mean(*names: str) -> Callable[[Blend], float]:
    return lambda b: sum(b.get(n) or 0.0 for n in names) / len(names)


def _asym(left: str, right: str) -> Callable[[Blend], float]:
    """One-sided movement: the difference between the two sides."""
    return lambda b: abs((b.get(left) or 0.0) - (b.get(right) or 0.0))


# Action units (FACS numbering) as blendshape readings.
AU = {
    "AU1 inner brow raiser": _mean("browInnerUp"),
    "AU2 outer brow raiser": _mean("browOuterUpLeft", "browOuterUpRight"),
    "AU4 brow lowerer": _mean("browDownLeft", "browDownRight"),
    "AU5 upper lid raiser": _mean("eyeWideLeft", "eyeWideRight"),
    "AU6 cheek raiser": _mean("cheekSquintLeft", "cheekSquintRight", "eyeSquintLeft", "eyeSquintRight"),
    "AU7 lid tightener": _mean("eyeSquintLeft", "eyeSquintRight"),
    "AU9 nose wrinkler": _mean("noseSneerLeft", "noseSneerRight"),
    "AU10 upper lip raiser": _mean("mouthUpperUpLeft", "mouthUpperUpRight"),
    "AU12 lip corner puller": _mean("mouthSmileLeft", "mouthSmileRight"),
    "AU12 one-sided": _asym("mouthSmileLeft", "mouthSmileRight"),
    "AU14 dimpler one-sided": _asym("mouthDimpleLeft", "mouthDimpleRight"),
    "AU15 lip corner depressor": _mean("mouthFrownLeft", "mouthFrownRight"),
    "AU17 chin raiser": _mean("mouthShrugLower"),
    "AU20 lip stretcher": _mean("mouthStretchLeft", "mouthStretchRight"),
    "AU24 lip presser": _mean("mouthPressLeft", "mouthPressRight"),
    "AU26 jaw drop": _mean("jawOpen"),
    "AU28 lip suck": _mean("mouthRollLower", "mouthRollUpper"),
    "AU43 eyes closed": _mean("eyeBlinkLeft", "eyeBlinkRight"),
    "AU64 eyes down": _mean("eyeLookDownLeft", "eyeLookDownRight"),
    "brow one-sided": _asym("browOuterUpLeft", "browOuterUpRight"),
    "mouth to one side": lambda b: max(b.get("mouthLeft") or 0.0, b.get("mouthRight") or 0.0),
}

# Category -> {action unit: weight}; weights sum to 1.
RECIPES: dict[str, dict[str, float]] = {
    "happy": {"AU12 lip corner puller": 0.7, "AU6 cheek raiser": 0.3},
    "sad": {"AU1 inner brow raiser": 0.3, "AU4 brow lowerer": 0.2, "AU15 lip corner depressor": 0.35,
            "AU17 chin raiser": 0.15},
    "angry": {"AU4 brow lowerer": 0.4, "AU7 lid tightener": 0.2, "AU24 lip presser": 0.25,
              "AU5 upper lid raiser": 0.15},
    "fear": {"AU1 inner brow raiser": 0.2, "AU4 brow lowerer": 0.15, "AU5 upper lid raiser": 0.25,
             "AU20 lip stretcher": 0.3, "AU26 jaw drop": 0.1},
    "surprised": {"AU1 inner brow raiser": 0.2, "AU2 outer brow raiser": 0.25, "AU5 upper lid raiser": 0.25,
                  "AU26 jaw drop": 0.3},
    "disgust": {"AU9 nose wrinkler": 0.45, "AU10 upper lip raiser": 0.35, "AU15 lip corner depressor": 0.2},
    "confused": {"AU4 brow lowerer": 0.35, "brow one-sided": 0.35, "mouth to one side": 0.3},
    "contempt": {"AU12 one-sided": 0.6, "AU14 dimpler one-sided": 0.4},
    "confident": {"AU12 lip corner puller": 0.4, "AU24 lip presser": 0.3, "AU17 chin raiser": 0.3},
    "shy": {"AU12 lip corner puller": 0.2, "AU64 eyes down": 0.6, "AU28 lip suck": 0.2},
    "sleepy": {"AU43 eyes closed": 0.75, "AU26 jaw drop": 0.25},
    "anxious": {"AU1 inner brow raiser": 0.35, "AU20 lip stretcher": 0.25, "AU28 lip suck": 0.25,
                "AU24 lip presser": 0.15},
}  # fmt: skip


def scores_from_blendshapes(blendshapes: Blend | None) -> dict[str, float] | None:
    """12 category scores in [0, 1]; None for a face without blendshapes (taken whole)."""
    if blendshapes is None:
        return None
    units = {name: read(blendshapes) for name, read in AU.items()}
    return {
        cat: min(1.0, max(0.0, GAIN * sum(w * units[unit] for unit, w in RECIPES[cat].items()))) for cat in CATEGORIES
    }


def _check_recipes() -> None:
    assert set(RECIPES) == set(CATEGORIES), "every category needs a recipe"
    for cat, recipe in RECIPES.items():
        assert abs(sum(recipe.values()) - 1.0) < 1e-9, f"{cat}: weights must sum to 1"
        assert set(recipe) <= set(AU), f"{cat}: unknown action unit"


_check_recipes()
