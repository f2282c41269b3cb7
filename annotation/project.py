"""The Label Studio labeling interface and instructions for intensity annotation.

One slider per category (0 to 1, step 0.05) on the aligned face crop, and an "unusable face"
choice. The instructions anchor 0, 0.5 and 1 for every category. The config is checked offline
(`validate_config`) before it is sent; values coming back are checked by `annotation.sync`, since
Label Studio checks none of them.
"""

from __future__ import annotations

import html

from storage.schemas import CATEGORIES

STEP = 0.05
STEP_DECIMALS = 2  # 0.05 has two: a value on the step is written with at most two decimals
UNUSABLE_CONTROL = "usable"
UNUSABLE_CHOICE = "unusable face"

# What 0.5 and 1 look like for each category (0 is always: no sign of it at all).
ANCHORS: dict[str, tuple[str, str]] = {
    "happy": ("a clear closed-mouth smile, cheeks slightly raised", "a broad open smile, cheeks up, eyes narrowed"),
    "sad": ("inner brows raised, mouth corners slightly down", "brows knit upward, corners pulled down, chin raised"),
    "angry": ("brows lowered and drawn together", "brows pulled hard down, glaring eyes, lips pressed or bared"),
    "fear": ("brows raised and drawn together, eyes widened", "eyes wide open, brows up and together, lips stretched"),
    "surprised": ("brows raised, eyes widened", "brows high, eyes wide open, jaw dropped"),
    "disgust": ("upper lip raised, nose slightly wrinkled", "nose wrinkled hard, upper lip curled up"),
    "confused": ("one brow raised or brows knit, a puzzled look", "strongly asymmetric brows, mouth pulled aside"),
    "contempt": ("a slight one-sided lip corner raise", "a pronounced one-sided smirk"),
    "confident": ("a composed face with a slight smile", "a firm assured look, chin up, controlled smile"),
    "shy": ("eyes slightly averted downward, a small smile", "gaze clearly down and away, lips pressed or bitten"),
    "sleepy": ("heavy, half-closed eyelids", "eyes nearly or fully closed, or a yawn"),
    "anxious": ("inner brows raised, lips tense", "worried brows, tense stretched or bitten lips"),
}


def on_step(value: float) -> float:
    """`value` in [0, 1] at the nearest STEP, as the float its decimal spells: 0.35, never
    0.35000000000000003 (what 7 * 0.05 is in floating point), so a slider shows what it holds."""
    return round(min(1.0, max(0.0, round(value / STEP) * STEP)), STEP_DECIMALS)


def label_config() -> str:
    sliders = "\n".join(
        f'    <View><Header value="{c}" size="6"/>'
        f'<Number name="{c}" toName="image" min="0" max="1" step="{STEP}" slider="true"/></View>'
        for c in CATEGORIES
    )
    return f"""<View>
  <Image name="image" value="$image" maxWidth="512px"/>
  <Choices name="{UNUSABLE_CONTROL}" toName="image" choice="single" showInline="true">
    <Choice value="{UNUSABLE_CHOICE}"/>
  </Choices>
  <View style="display: grid; grid-template-columns: repeat(3, 1fr); column-gap: 1em">
{sliders}
  </View>
</View>"""


def instructions() -> str:
    rows = "".join(
        f"<tr><td><b>{c}</b></td><td>no sign of it</td><td>{html.escape(mid)}</td><td>{html.escape(top)}</td></tr>"
        for c, (mid, top) in ANCHORS.items()
    )
    return (
        "<p>Rate how strongly the face shows each expression, from 0 to 1 in steps of 0.05. Rate every "
        "category on its own: a face can be 0.6 happy and 0.3 shy. The model's guess is filled in; "
        "correct it. Mark <b>unusable face</b> when the crop is not a single clear face.</p>"
        "<p>Set every slider: 0 when the face shows no sign of the expression. A slider you leave "
        "untouched is recorded as <i>not rated</i> for that expression, and your other ratings count.</p>"
        "<p>Fear and surprise, anger and disgust look alike: fear draws the brows together and stretches "
        "the lips; surprise raises the brows and drops the jaw. Anger lowers the brows; disgust wrinkles "
        "the nose and raises the upper lip.</p>"
        f"<table><tr><th></th><th>0</th><th>0.5</th><th>1</th></tr>{rows}</table>"
    )


def validate_config(config: str) -> None:
    """Raise with Label Studio's own message if the config is not valid (checked offline)."""
    from label_studio_sdk.label_interface import LabelInterface

    LabelInterface(config).validate()


assert set(ANCHORS) == set(CATEGORIES)
