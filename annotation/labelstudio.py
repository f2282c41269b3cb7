"""Label Studio, driven through `label-studio-sdk`: the project, task push and annotation pull.

Every call retries with backoff while the server is down or restarting; a refused token or an
unreachable server ends in one clear `LabelStudioError`. The token is never logged. Values coming
back are validated here (Label Studio checks none of them): a malformed annotation is quarantined
with its reason instead of entering `annotations`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from annotation.project import STEP, UNUSABLE_CHOICE, UNUSABLE_CONTROL, instructions, label_config, validate_config
from storage.schemas import CATEGORIES

T = TypeVar("T")


class LabelStudioError(Exception):
    """The server cannot be used: unreachable, or it refused our token."""


@dataclass(frozen=True)
class ServerSettings:
    url: str
    token: str  # from the environment (FFE_LABEL_STUDIO_TOKEN); never logged
    project_title: str = "FFE intensity"
    overlap: int = 2  # annotators per face
    crops_dir: str = ""  # where the crops are (a local-files storage path under the document root)
    document_root: str = ""  # the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT
    attempts: int = 6  # tries per call while the server is down (backoff 0.5 s, 1 s, 2 s ...)
    batch_size: int = 1000  # tasks per import call
    gold_rate: float = 0.0  # hidden gold tasks (faces with known scores) per regular task

    def __repr__(self) -> str:  # keep the token out of logs and tracebacks
        return f"ServerSettings(url={self.url!r}, project_title={self.project_title!r}, token=***)"


def _status(err: Exception) -> int | None:
    return getattr(err, "status_code", None)


def retrying(call: Callable[[], T], what: str, settings: ServerSettings) -> T:
    """`call()`, retried with exponential backoff on connection errors and 5xx answers."""
    import httpx

    delay = 0.5
    for attempt in range(1, settings.attempts + 1):
        try:
            return call()
        except Exception as err:
            status = _status(err)
            if status in (401, 403):
                raise LabelStudioError(
                    f"Label Studio at {settings.url} refused the token ({status}) while trying to {what}: "
                    "set FFE_LABEL_STUDIO_TOKEN to a valid API token"
                ) from None
            transient = isinstance(err, httpx.TransportError) or (status is not None and status >= 500)
            if not transient:
                raise
            if attempt == settings.attempts:
                raise LabelStudioError(
                    f"Label Studio at {settings.url} did not answer while trying to {what} "
                    f"({settings.attempts} tries): {type(err).__name__}"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
    raise AssertionError("unreachable")


def connect(settings: ServerSettings):
    from label_studio_sdk import LabelStudio

    if not settings.url:
        raise LabelStudioError("no Label Studio URL configured (FFE_LABEL_STUDIO_URL)")
    if not settings.token:
        raise LabelStudioError("no Label Studio token configured (FFE_LABEL_STUDIO_TOKEN)")
    ls = LabelStudio(base_url=settings.url, api_key=settings.token, timeout=30)
    retrying(ls.users.whoami, "check the token", settings)
    return ls


def ensure_project(ls, settings: ServerSettings) -> int:
    """The project's id: found by its title, or created (its config checked offline first)."""
    found = retrying(lambda: list(ls.projects.list(search=settings.project_title)), "list projects", settings)
    for p in found:
        if p.title == settings.project_title:
            project_id = p.id
            break
    else:
        config = label_config()
        validate_config(config)
        project_id = retrying(
            lambda config=config: ls.projects.create(
                title=settings.project_title,
                label_config=config,
                expert_instruction=instructions(),
                show_instruction=True,
                maximum_annotations=settings.overlap,
                show_skip_button=True,
            ),
            "create the project",
            settings,
        ).id
    if settings.crops_dir:
        storages = retrying(lambda: list(ls.import_storage.local.list(project=project_id)), "list storages", settings)
        if not any(getattr(s, "path", None) == settings.crops_dir for s in storages):
            retrying(
                lambda: ls.import_storage.local.create(
                    project=project_id, path=settings.crops_dir, use_blob_urls=True, regex_filter=r".*\.png",
                    title="FFE crops",
                ),
                "register the crops folder",
                settings,
            )  # fmt: skip
    return project_id


PAGE = 1000  # tasks per listing page: fewer round trips than the default 100


def _all_tasks(ls, project_id: int, settings: ServerSettings, fields: str = "all") -> list:
    """Every task of the project (`fields="all"`: with annotations and predictions)."""
    return retrying(
        lambda: list(ls.tasks.list(project=project_id, fields=fields, page_size=PAGE)), "list tasks", settings
    )


def task_key(data: dict) -> str:
    """A task's identity in the project: the face_id, or `gold:<face_id>:<n>` for gold copies."""
    return data.get("key") or data.get("face_id")


def pushed_keys(ls, project_id: int, settings: ServerSettings) -> set[str]:
    return {task_key(t.data) for t in _all_tasks(ls, project_id, settings, fields="task_only")}


def task_payload(
    face_id: str, image_url: str, prelabel: dict | None, model_version: str, *, gold_copy: int | None = None
) -> dict:
    """A task; `gold_copy` n makes it the n-th hidden gold copy of the face (no prediction shown)."""
    data: dict[str, Any] = {"image": image_url, "face_id": face_id}
    if gold_copy is not None:
        data.update(key=f"gold:{face_id}:{gold_copy}", gold=True)
        prelabel = None
    payload: dict[str, Any] = {"data": data}
    if prelabel:
        result = [
            {
                "from_name": c,
                "to_name": "image",
                "type": "number",
                "value": {"number": round(prelabel[c] / STEP) * STEP},
            }
            for c in CATEGORIES
        ]
        payload["predictions"] = [{"model_version": model_version, "result": result}]
    return payload


def push_tasks(ls, project_id: int, payloads: Iterable[dict], settings: ServerSettings) -> int:
    """Import tasks whose key the project does not hold yet, in batches; return how many."""
    have = pushed_keys(ls, project_id, settings)
    new = [p for p in payloads if task_key(p["data"]) not in have]
    for i in range(0, len(new), settings.batch_size):
        chunk = new[i : i + settings.batch_size]
        retrying(lambda chunk=chunk: ls.projects.import_tasks(id=project_id, request=chunk), "import tasks", settings)
    return len(new)


@dataclass
class Pulled:
    rows: list[dict]  # for the annotations table
    quarantined: list[dict]  # (item, reason, detail) of malformed annotations
    gold: list[dict]  # ratings given on gold tasks (same shape as rows)


def _parse(result: list[dict]) -> tuple[str, dict[str, float | None], list[str]]:
    """(status, scores, problems) of one annotation's result."""
    scores: dict[str, float | None] = dict.fromkeys(CATEGORIES)
    unusable = False
    problems = []
    for item in result:
        name, value = item.get("from_name"), item.get("value", {})
        if name == UNUSABLE_CONTROL:
            unusable = unusable or UNUSABLE_CHOICE in value.get("choices", [])
        elif name in scores:
            number = value.get("number")
            if not isinstance(number, (int, float)) or isinstance(number, bool) or math.isnan(number):
                problems.append(f"{name}: not a number ({number!r})")
            elif not 0.0 <= number <= 1.0:
                problems.append(f"{name}: {number} is outside 0-1")
            elif abs(number / STEP - round(number / STEP)) > 1e-6:
                problems.append(f"{name}: {number} is off the {STEP} step")
            else:
                scores[name] = float(number)
        else:
            problems.append(f"unknown control {name!r}")
    if unusable:
        return "unusable", dict.fromkeys(CATEGORIES), []
    missing = [c for c in CATEGORIES if scores[c] is None and not any(p.startswith(f"{c}:") for p in problems)]
    if missing:
        problems.append(f"no value for {', '.join(missing)}")
    return "submitted", scores, problems


def export_annotated(ls, project_id: int, settings: ServerSettings) -> list[dict]:
    """The server's own JSON export of every annotated task (one bulk call: the fastest read)."""
    import json

    def download() -> list[dict]:
        body = b"".join(ls.projects.exports.download_sync(id=project_id, export_type="JSON", download_all_tasks=False))
        return json.loads(body)

    return retrying(download, "export annotations", settings)


def _annotator(completed_by: Any, users: dict[int, str]) -> str:
    if isinstance(completed_by, dict):  # some exports embed the user
        return completed_by.get("email") or f"user-{completed_by.get('id')}"
    return users.get(completed_by, f"user-{completed_by}")


def pull_annotations(ls, project_id: int, known_faces: set[str], settings: ServerSettings) -> Pulled:
    """Every annotation of the project, validated: one row per annotator per face (their latest)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:  # the user list loads while the export runs
        user_list = pool.submit(retrying, lambda: list(ls.users.list()), "list users", settings)
        exported = export_annotated(ls, project_id, settings)
        users = {u.id: u.email or u.username for u in user_list.result()}
    latest: dict[tuple[str, str], dict] = {}
    gold: dict[tuple[str, str], dict] = {}
    quarantined = []
    for task in exported:
        data = task.get("data") or {}
        face_id = data.get("face_id")
        target = gold if data.get("gold") else latest
        for ann in task.get("annotations") or []:
            item = f"task {task['id']} annotation {ann['id']}"
            annotator = _annotator(ann.get("completed_by"), users)
            if face_id not in known_faces:
                quarantined.append(
                    dict(item=item, reason="unknown_face", detail=f"face_id {face_id!r} is not in faces")
                )
                continue
            if ann.get("was_cancelled"):
                status, scores, problems = "skipped", dict.fromkeys(CATEGORIES), []
            else:
                status, scores, problems = _parse(ann.get("result") or [])
            if problems:
                quarantined.append(dict(item=item, reason="malformed_annotation", detail="; ".join(problems)))
                continue
            updated = datetime.fromisoformat(ann["updated_at"].replace("Z", "+00:00")).astimezone(UTC)
            row = dict(face_id=face_id, annotator=annotator, task_id=task["id"], annotation_id=ann["id"], status=status,
                       lead_time_s=ann.get("lead_time"), updated_at=updated, **scores)  # fmt: skip
            key = (task_key(data), annotator)
            if key not in target or target[key]["updated_at"] <= updated:
                target[key] = row

    def ordered(rows: dict) -> list[dict]:
        return sorted(rows.values(), key=lambda r: (r["face_id"], r["annotator"], r["task_id"]))

    return Pulled(rows=ordered(latest), quarantined=quarantined, gold=ordered(gold))
