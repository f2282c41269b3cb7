"""Make docs/bench-report.png: the bench report of the demo's loop (the synthetic world, the tiny model
trained and benched beside the no-edit baseline), as headless Chromium shows it.

Needs Debian's chromium (`make chromium`). Builds the world in a temp folder (~3 minutes on 2 cores).

    .venv/bin/python docs/screenshot_report.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines.build import build  # noqa: E402
from pixelsmile.synthetic import write_world_input  # noqa: E402
from storage.layout import Layout  # noqa: E402
from storage.leaderboard import leaderboard  # noqa: E402

OUT = REPO / "docs" / "bench-report.png"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]  # fmt: skip


def main() -> None:
    browser = shutil.which("chromium")
    if browser is None:
        sys.exit("needs Debian's chromium: make chromium")
    tmp = Path(tempfile.mkdtemp(prefix="ffe-report-"))
    os.environ["FFE_JUDGE"] = "synthetic"
    layout = Layout.at(tmp / "world")
    write_world_input(tmp / "world" / "input", people=24)
    build(layout, pre_cropped=True, echo=print)
    (row,) = [r for r in leaderboard(layout) if r["kind"] == "measured"]
    report = layout.runs / row["release"] / row["run_id"] / "bench" / "report.html"
    subprocess.run([browser, *FLAGS, f"--user-data-dir={tmp / 'profile'}", "--window-size=1100,2000",
                    f"--screenshot={OUT}", report.as_uri()], check=True, capture_output=True, timeout=120)  # fmt: skip
    print(f"wrote {OUT} from {report}")


if __name__ == "__main__":
    main()
