"""The FFE-Bench numbers the PixelSmile paper reports (arXiv 2603.25728; `../shared/paper-facts.md`),
as leaderboard rows of kind "reported": shown beside measured rows, never mixed with them (another
judge, other tasks). Blank cells of the paper's table are None."""

from __future__ import annotations

SOURCE = "PixelSmile paper (arXiv 2603.25728), FFE-Bench table"

_COLUMNS = ("mscr", "acc6", "acc12", "cls6", "cls12", "id_sim", "hes")
_TABLE = {
    "PixelSmile": (0.0550, 0.8627, 0.6000, 0.8078, 0.7305, 0.6522, 0.4723),
    "PixelSmile without training": (0.2400, 0.5294, 0.3500, 0.6892, 0.5217, 0.6769, 0.4086),
    "GPT-Image-1.5": (0.1107, 0.8039, 0.6300, None, None, 0.5056, None),
    "Nano Banana Pro": (0.1754, 0.8431, 0.6200, None, None, 0.7107, None),
    "Qwen-Edit-2511": (0.2625, 0.4510, 0.2900, None, None, 0.6938, None),
    "SliderEdit": (None, None, None, 0.5599, 0.5217, 0.7414, 0.3441),
    "K-Slider": (None, None, None, -0.0459, -0.0634, 0.7974, 0.3272),
}

REPORTED: list[dict] = [{"model": m, **dict(zip(_COLUMNS, values, strict=True))} for m, values in _TABLE.items()]
