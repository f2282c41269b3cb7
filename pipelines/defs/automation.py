"""Declarative automation of the assets across batches, and the sensor that evaluates it.

Dagster's `eager()` reacts to updates *since its previous evaluation*, and its first evaluation sees
none: a batch curated before the automation sensor first ran (by `ffe build`, or while the sensor
was off in an earlier Dagster) would wait for the next batch. `after_upstream()` is eager plus a
catch-up on that first evaluation: every target whose inputs are all present runs once. The targets
are idempotent (identities assign incrementally, the release plan writes a version only when it is
new), so the catch-up costs one quick round and loses nothing.
"""

import dagster as dg

AC = dg.AutomationCondition


def after_upstream() -> dg.AutomationCondition:
    """Run when an input was updated (or this went missing), and once at the sensor's first
    evaluation; never while an input is missing or in progress, or this is in progress."""
    triggered = (AC.newly_missing() | AC.any_deps_updated()).since_last_handled() | AC.initial_evaluation()
    return (triggered & ~AC.any_deps_missing() & ~AC.any_deps_in_progress() & ~AC.in_progress()).with_label(
        "after_upstream"
    )


# The loop must run from the moment the daemon starts (`ffe ui`): Dagster's own default sensor is
# created STOPPED, so this one replaces it (tests/test_definitions.py holds every sensor to it).
automation_sensor = dg.AutomationConditionSensorDefinition(
    "ffe_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    # Dagster names these runs __ASSET_JOB; the tag says who launched them (the assets are listed).
    run_tags={"ffe/launched_by": "ffe_automation"},
    description="Declarative automation of the assets across batches (identities, annotation, affect scores, "
    "the release plan): each runs when what it reads was updated, and once when the daemon first starts.",
)
