"""Run config checked by the domain's own rules, not only by its types.

Each asset's `Config` names its settings and their types; the rules between them (fractions that
sum past 1, a detector that needs a model file, a model file that is not there) live in the domain's
settings classes (`ReleaseConfig`, `FaceSettings` ...). A Config's `model_validator` runs those
rules through `domain_checked`, so that `ffe build --config` refuses a wrong value before any run
starts (pipelines/build.py `check_run_config`), naming the key, instead of failing in its step after
the batch was registered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from curation.models import ModelError

C = TypeVar("C")


def domain_checked(config: C, check: Callable[[], object]) -> C:
    """`config` once `check()` has passed; its ModelError (a model file missing or empty) is raised
    as the ValueError pydantic reports."""
    try:
        check()
    except ModelError as err:
        raise ValueError(str(err)) from None
    return config
