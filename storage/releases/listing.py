"""The releases of a work folder, as `ffe release list` and `show` print them."""

from __future__ import annotations

from storage.errors import StorageError
from storage.layout import Layout
from storage.releases.build import read_manifest
from storage.releases.config import SPLITS
from storage.releases.plan import planned_versions, read_plan

LATEST = "latest"  # the most recently planned release that is complete


def summary(layout: Layout, version: str) -> dict:
    try:
        manifest = read_manifest(layout, version)
        state = "planned"
    except StorageError:  # listed as damaged (`ffe check` names the file, `ffe build` rebuilds it)
        manifest, state = None, "damaged"
    if manifest is None:
        info, _ = read_plan(layout, version)
        return {"version": version, "planned_at": info["planned_at"], "built_at": None, "state": state,
                "faces": info["counts"]["faces"], "identities": info["counts"]["identities"],
                "splits": {s: info["counts"][f"{s}_faces"] for s in SPLITS}}  # fmt: skip
    counts, shards = manifest["counts"], manifest["shards"] or {}
    return {
        "version": version,
        "planned_at": manifest["planned_at"],
        "built_at": manifest["built_at"],
        "state": "complete" if manifest["complete"] else "sharding",
        "faces": counts["faces"],
        "identities": counts["identities"],
        "splits": {s: counts["splits"][s]["faces"] for s in SPLITS},
        "triplets": counts["triplets"],
        "shards": sum(len(v) for v in shards.values()),
        "bytes": sum(r["bytes"] for v in shards.values() for r in v),
    }


def list_releases(layout: Layout) -> list[dict]:
    return [summary(layout, v) for v in planned_versions(layout)]


def resolve_version(layout: Layout, name: str) -> str:
    versions = planned_versions(layout)
    if name == LATEST:
        complete = [v for v in versions if summary(layout, v)["state"] == "complete"]
        if not complete:
            raise StorageError(f"no complete release in {layout.releases} yet (run `ffe release build`)")
        return complete[-1]
    if name not in versions:
        known = ", ".join(versions[-5:]) or "none"
        raise StorageError(f"no release {name!r} in {layout.releases} (latest: {known})")
    return name
