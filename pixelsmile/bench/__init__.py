"""FFE-Bench: tasks from a release's bench split, judges, bench runs (metrics: pixelsmile/metrics.py)."""
