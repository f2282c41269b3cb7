"""Metadata as the Dagster UI should show it: numbers a person reads, not float noise."""

from collections.abc import Mapping
from typing import Any

import dagster as dg

DECIMALS = 4


def tidy(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Floats rounded to 4 decimals (0.07000000029802322 -> 0.07), inside dicts and lists too;
    everything else (MetadataValue objects but floats) as given."""
    return {k: _tidy(v) for k, v in metadata.items()}


def _tidy(value: Any) -> Any:
    if isinstance(value, dg.MetadataValue):  # a typed value (a path, a table ...): only floats change
        return _tidy(value.value) if isinstance(value, dg.FloatMetadataValue) else value
    if isinstance(value, float):
        return round(value, DECIMALS) + 0.0  # never -0.0
    if isinstance(value, Mapping):
        return {k: _tidy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_tidy(v) for v in value]
    return value
