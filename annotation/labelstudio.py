"""Label Studio, driven through `label-studio-sdk`: the project, task push and annotation pull.

Every call retries with backoff while the server is down or restarting; a refused token or an
unreachable server ends in one clear `LabelStudioError`. The token is never logged. Values coming
back are validated here (Label Studio checks none of them): a malformed annotation (a value that is
not a number, off the step or outside 0-1, a `"value": null` item, an unreadable time) is
quarantined with its reason, naming task and annotation, instead of entering `annotations`; the
others sync as usual. A slider left untouched is "not rated" for its category only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from annotation.project import (
    STEP,
    UNUSABLE_CHOICE,
    UNUSABLE_CONTROL,
    instructions,
    label_config,
    on_step,
    validate_config,
)
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


@dataclass(frozen=True)
class Task:
    """A task as the project holds it: its id, key (face_id or gold copy key) and annotation count."""

    id: int
    key: str
    face_id: str
    annotations: int


TASK_FIELDS = "id,data,total_annotations,cancelled_annotations"


def project_tasks(ls, project_id: int, settings: ServerSettings) -> list[Task]:
    """Every task of the project: id, data and annotation counts only (`include`: 3-4x faster than
    the data manager's full task rows, benches/annotation.py)."""
    listed = retrying(
        lambda: list(ls.tasks.list(project=project_id, fields="task_only", include=TASK_FIELDS, page_size=PAGE)),
        "list tasks", settings,
    )  # fmt: skip
    return [
        Task(t.id, task_key(t.data), t.data.get("face_id", ""),
             (t.total_annotations or 0) + (getattr(t, "cancelled_annotations", 0) or 0))
        for t in listed
    ]  # fmt: skip


def several_tasks(tasks: Iterable[Task]) -> dict[str, list[Task]]:
    """Keys held by more than one task (a push that raced another), their tasks oldest first."""
    by_key: dict[str, list[Task]] = {}
    for t in tasks:
        by_key.setdefault(t.key, []).append(t)
    return {k: sorted(ts, key=lambda t: t.id) for k, ts in by_key.items() if len(ts) > 1}


def remove_unannotated_copies(ls, tasks: list[Task], settings: ServerSettings) -> tuple[list[Task], list[Task]]:
    """Delete the later copies of a key that nobody has annotated (the oldest task stays); return
    (the tasks left, the tasks deleted). Copies that hold annotations stay: sync reports them."""
    removed = [t for copies in several_tasks(tasks).values() for t in copies[1:] if t.annotations == 0]
    for t in removed:
        retrying(lambda t=t: ls.tasks.delete(id=str(t.id)), f"delete duplicate task {t.id}", settings)
    gone = {t.id for t in removed}
    return [t for t in tasks if t.id not in gone], removed


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
                "value": {"number": on_step(prelabel[c])},  # 0.35, not 0.35000000000000003
            }
            for c in CATEGORIES
        ]
        payload["predictions"] = [{"model_version": model_version, "result": result}]
    return payload


def push_tasks(
    ls, project_id: int, payloads: Iterable[dict], settings: ServerSettings, *, skip: Iterable[str] = ()
) -> int:
    """Import tasks whose key the project does not hold yet (listed right before the import) and
    that are not in `skip`, in batches; return how many."""
    have = {t.key for t in project_tasks(ls, project_id, settings)} | set(skip)
    new = [p for p in payloads if task_key(p["data"]) not in have]
    import_tasks(ls, project_id, new, settings)
    return len(new)


def import_tasks(ls, project_id: int, new: list[dict], settings: ServerSettings) -> list[Task] | None:
    """Import `new` in batches of `settings.batch_size`; the tasks made, or None where the server
    does not say (editions that import asynchronously)."""
    made: list[Task] | None = []
    for i in range(0, len(new), settings.batch_size):
        chunk = new[i : i + settings.batch_size]
        answer = retrying(
            lambda chunk=chunk: ls.projects.import_tasks(id=project_id, request=chunk, return_task_ids=True),
            "import tasks", settings,
        )  # fmt: skip
        ids = getattr(answer, "task_ids", None)
        if made is not None and ids is not None and len(ids) == len(chunk):
            made += [Task(int(n), task_key(p["data"]), p["data"]["face_id"], 0)
                     for n, p in zip(ids, chunk, strict=True)]  # fmt: skip
        else:
            made = None
    return made


@dataclass
class Pulled:
    rows: list[dict]  # for the annotations table
    quarantined: list[dict]  # (item, reason, detail) of malformed annotations
    gold: list[dict]  # ratings given on gold tasks (same shape as rows)
    tasks: list[Task] | None  # every task of the project, when asked for (listed beside the export)
    annotated_tasks: list[Task]  # the tasks the export held (those with annotations)
    annotation_ids: set[int]  # every annotation the export held, usable or not


def _parse(result: list) -> tuple[str, dict[str, float | None], list[str]]:
    """(status, scores, problems) of one annotation's result. A slider left untouched is not rated
    (None) for its category only; with none set and no "unusable face", the status is `empty`."""
    scores: dict[str, float | None] = dict.fromkeys(CATEGORIES)
    unusable = False
    problems: list[str] = []
    rated: set[str] = set()
    if not isinstance(result, list):
        return "submitted", scores, [f"result is {type(result).__name__}, not a list"]
    for item in result:
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            what = item.get("from_name", "?") if isinstance(item, dict) else "?"
            problems.append(f"{what}: value is {(item.get('value') if isinstance(item, dict) else item)!r}")
            continue
        name, value = item.get("from_name"), item["value"]
        if name is None:
            problems.append(f"an item has no from_name (value {value!r})")
        elif not isinstance(name, str):
            problems.append(f"an item's from_name is {name!r}, not a control's name")
        elif name == UNUSABLE_CONTROL:
            choices = value.get("choices")
            if not isinstance(choices, list) or any(c != UNUSABLE_CHOICE for c in choices):
                problems.append(f"{name}: choices {choices!r} (the only choice is {UNUSABLE_CHOICE!r})")
            unusable = unusable or choices == [UNUSABLE_CHOICE]
        elif name in scores:
            number = value.get("number")
            if name in rated:
                problems.append(f"{name} set twice ({scores[name]} and {number!r})")
            elif not _finite_number(number):
                problems.append(f"{name}: not a number ({number!r})")
            elif not 0.0 <= number <= 1.0:
                problems.append(f"{name}: {number} is outside 0-1")
            elif abs(number / STEP - round(number / STEP)) > 1e-6:
                problems.append(f"{name}: {number} is off the {STEP} step")
            else:
                scores[name] = on_step(number) + 0.0  # the step's decimal (1e-17 -> 0.0); -0.0 -> 0.0
                rated.add(name)
        else:
            problems.append(f"unknown control {name!r}")
    if unusable:
        return "unusable", dict.fromkeys(CATEGORIES), []
    if not problems and all(v is None for v in scores.values()):
        return "empty", scores, []
    return "submitted", scores, problems


def _finite_number(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


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


class _Malformed(ValueError):
    pass


def _row(task: dict, ann: dict, face_id: str, users: dict[int, str]) -> dict:
    """One annotation as an `annotations` row; _Malformed saying what is wrong."""
    if ann.get("was_cancelled"):
        status, scores, problems = "skipped", dict.fromkeys(CATEGORIES), []
    else:
        status, scores, problems = _parse(ann.get("result") or [])
    if problems:
        raise _Malformed("; ".join(problems))
    try:
        updated = datetime.fromisoformat(str(ann["updated_at"]).replace("Z", "+00:00")).astimezone(UTC)
    except (KeyError, ValueError) as err:
        raise _Malformed(f"updated_at is not a time ({err})") from None
    lead = ann.get("lead_time")
    return dict(face_id=face_id, annotator=_annotator(ann.get("completed_by"), users), task_id=int(task["id"]),
                annotation_id=int(ann["id"]), status=status, updated_at=updated,
                lead_time_s=float(lead) if isinstance(lead, (int, float)) else None, **scores)  # fmt: skip


def task_count(ls, project_id: int, settings: ServerSettings) -> int:
    """How many tasks the project holds (one cheap call)."""
    return retrying(lambda: ls.projects.get(id=project_id), "read the project", settings).task_number or 0


def pull_annotations(
    ls, project_id: int, known_faces: set[str], settings: ServerSettings, *, known_tasks: int | None = None
) -> Pulled:
    """Every annotation of the project, validated: one row per annotator per face (their latest);
    and every task, unless the project holds `known_tasks` tasks (the count is read beside the
    export; the whole list, on 2 cores as dear as the export, only when it differs)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:  # the user list and the task count load while the export runs
        user_list = pool.submit(retrying, lambda: list(ls.users.list()), "list users", settings)
        count = pool.submit(task_count, ls, project_id, settings) if known_tasks is not None else None
        exported = export_annotated(ls, project_id, settings)
        users = {u.id: u.email or u.username for u in user_list.result()}
    tasks = None if count is not None and count.result() == known_tasks else project_tasks(ls, project_id, settings)
    seen = {a["id"] for t in exported for a in t.get("annotations") or [] if isinstance(a, dict) and "id" in a}
    annotated = [Task(t["id"], task_key(t.get("data") or {}), (t.get("data") or {}).get("face_id", ""),
                      len(t.get("annotations") or [])) for t in exported if "id" in t]  # fmt: skip
    latest: dict[tuple[str, str], dict] = {}
    gold: dict[tuple[str, str], dict] = {}
    quarantined = []
    for task in exported:
        data = task.get("data") or {}
        face_id = data.get("face_id")
        target = gold if data.get("gold") else latest
        for ann in task.get("annotations") or []:
            item = f"task {task.get('id')} annotation {ann.get('id') if isinstance(ann, dict) else '?'}"
            if face_id not in known_faces:
                quarantined.append(
                    dict(item=item, reason="unknown_face", detail=f"face_id {face_id!r} is not in faces")
                )
                continue
            try:  # anything Label Studio stored but we cannot read is this annotation's problem only
                row = _row(task, ann, face_id, users)
            except _Malformed as err:
                quarantined.append(dict(item=item, reason="malformed_annotation", detail=str(err)))
                continue
            except Exception as err:
                quarantined.append(dict(item=item, reason="malformed_annotation",
                                        detail=f"{type(err).__name__}: {err}"))  # fmt: skip
                continue
            key = (task_key(data), row["annotator"])
            if key not in target or target[key]["updated_at"] <= row["updated_at"]:
                target[key] = row

    def ordered(rows: dict) -> list[dict]:
        return sorted(rows.values(), key=lambda r: (r["face_id"], r["annotator"], r["task_id"]))

    return Pulled(rows=ordered(latest), quarantined=quarantined, gold=ordered(gold), tasks=tasks,
                  annotated_tasks=annotated, annotation_ids=seen)  # fmt: skip
