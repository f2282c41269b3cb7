"""Progress off a terminal is plain lines, not tqdm's carriage-return frames (Found: the demo's log
was mostly such frames)."""

from __future__ import annotations

import io
import subprocess
import sys

from storage.progress import PlainProgress, progress_bar
from tests.conftest import REPO


def test_off_a_terminal_progress_is_a_few_plain_lines():
    out = io.StringIO()
    bar = progress_bar(range(1000), desc="bench", unit="task", file=out, every_s=0.0)
    assert isinstance(bar, PlainProgress)
    assert sum(1 for _ in bar) == 1000
    text = out.getvalue()
    assert "\r" not in text and text.splitlines()[-1].startswith("bench: 1000/1000 tasks (100%)")


def test_lines_come_every_few_seconds_and_once_at_the_end():
    out = io.StringIO()
    bar = progress_bar(total=50, desc="train", unit="step", file=out, every_s=3600)
    for _ in range(50):
        bar.update(1)
    bar.set_postfix(loss="0.1234")
    bar.close()
    assert out.getvalue().splitlines() == [out.getvalue().strip()] and "loss=0.1234" in out.getvalue()


def test_disabled_progress_prints_nothing():
    out = io.StringIO()
    for _ in progress_bar(range(10), desc="x", disable=True, file=out):
        pass
    assert out.getvalue() == ""


def test_a_training_run_logged_to_a_file_has_no_carriage_returns(tmp_path):
    """The trainer's own bar, as a log file sees it (the demo's `ffe build > log`)."""
    code = ("from storage.progress import progress_bar\n"
            "bar = progress_bar(total=3, desc='train', unit='step')\n"
            "[bar.update(1) for _ in range(3)]\nbar.close()\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "\r" not in done.stderr and "train: 3/3 steps (100%)" in done.stderr
