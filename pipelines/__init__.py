"""Dagster wiring only: assets, checks, sensors, resources, the `ffe` CLI.

The domain packages (curation, annotation, pixelsmile, storage) never import this one."""
