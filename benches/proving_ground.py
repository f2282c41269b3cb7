"""The proving ground's result as the paper's table: the world's base editor prompted, and fine-tuned
three ways (plain flow matching, symmetric without L_SC, PixelSmile) with the same code, data and
steps, judged exactly, beside no edit and a perfect editor (pixelsmile/proving.py; docs/model.md).

Writes benches/results/proving_ground[-quick].json and its plots under
benches/results/proving_ground[-quick]/ (CLS curves, sweep strips).

    python benches/proving_ground.py [--quick] [--steps N] [--people N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benches.common import RESULTS, report  # noqa: E402
from pixelsmile.proving import ProvingSettings, run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few steps: checks the plumbing, proves nothing")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--people", type=int, default=None)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the world and runs here (resumable)")
    args = ap.parse_args()
    settings = ProvingSettings()
    if args.quick:
        settings = replace(settings, people=30, steps=20, batch_size=4, sample_steps=8, bootstrap=20)
    if args.steps:
        settings = replace(settings, steps=args.steps)
    if args.people:
        settings = replace(settings, people=args.people)
    with tempfile.TemporaryDirectory(prefix="ffe-proving-") as tmp:
        work = args.workdir or Path(tmp)
        start = time.perf_counter()
        result = run(work, settings, progress=not args.quick)
        plots = RESULTS / f"proving_ground{'-quick' if args.quick else ''}"
        plots.mkdir(parents=True, exist_ok=True)
        for name in result["plots"]:
            shutil.copyfile(work / name, plots / name)
    report("proving_ground", args.quick, {"bench": "proving_ground", "wall_s": round(time.perf_counter() - start, 1),
                                          **result})  # fmt: skip


if __name__ == "__main__":
    main()
