"""What every benchmark ends with: its result as one JSON line on stdout and in benches/results/."""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def report(name: str, quick: bool, result: dict) -> dict:
    """Stamp `result` with the machine and time, print it as one line, write <name>[-quick].json."""
    result = {
        **result,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    print(json.dumps(result))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}{'-quick' if quick else ''}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
