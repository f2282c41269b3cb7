"""Against a real Label Studio server: the project, task push, annotations from several annotators,
sync, consensus and agreement; reruns change nothing; malformed input is quarantined."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from annotation import labelstudio as lsapi
from annotation import sync
from annotation.agreement import krippendorff_alpha_interval
from annotation.scores import build_affect_scores
from pipelines.cli import main
from storage import tables
from storage.layout import Layout
from storage.schemas import CATEGORIES

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture
def built(tmp_path, sample_dir, capsys):
    """A work folder with the sample and insightface's group photo curated and pre-labelled."""
    import insightface.data

    shutil.copy(Path(insightface.data.__file__).parent / "images" / "t1.jpg", sample_dir / "group.jpg")
    work = tmp_path / "w"
    select = "key:prelabels or key:identities"  # and what they need upstream
    assert main(["build", "--input", str(sample_dir), "--workdir", str(work), "--select", select]) == 0
    capsys.readouterr()
    return Layout.at(work)


def _settings(layout, label_studio, title, **kw):
    url, token = label_studio
    return sync.settings_from_env(layout, **{"url": url, "token": token, "project_title": title, **kw})


def _result(scores: dict[str, float], unusable: bool = False) -> list[dict]:
    result = [{"from_name": c, "to_name": "image", "type": "number", "value": {"number": v}} for c, v in scores.items()]
    if unusable:
        result.append({"from_name": "usable", "to_name": "image", "type": "choices",
                       "value": {"choices": ["unusable face"]}})  # fmt: skip
    return result


def test_push_annotate_sync_consensus_and_reruns(built, label_studio):
    layout = built
    settings = _settings(layout, label_studio, "FFE test round 1")
    first = sync.push(layout, settings)
    eligible = first["eligible_faces"]
    assert first["pushed"] == eligible >= 6  # the astronaut, her mirror image, the group's faces
    assert sync.push(layout, settings)["pushed"] == 0  # idempotent by face_id

    ls = lsapi.connect(settings)
    project = lsapi.ensure_project(ls, settings)
    assert lsapi.ensure_project(ls, settings) == project  # found, not created again
    org = ls.users.whoami().active_organization
    users = {name: ls.users.create(username=name, email=f"{name}@ffe.local", active_organization=org).id
             for name in ("ann1", "ann2", "ann3")}  # fmt: skip
    tasks = sorted(lsapi._all_tasks(ls, project, settings), key=lambda t: t.data["face_id"])
    assert len(tasks) == eligible and all(t.predictions or t.total_predictions for t in tasks)

    # ann1 and ann2 agree on every face (happy rises face by face); ann3 rates face 0 far off,
    # skips face 1, marks face 2 unusable, and sends a malformed answer for face 3.
    base = dict.fromkeys(CATEGORIES, 0.0)
    for k, task in enumerate(tasks):
        level = round(0.05 * (2 + 3 * k) % 1.0, 2)
        for name, delta in (("ann1", 0.0), ("ann2", 0.05)):
            ls.annotations.create(id=task.id, result=_result({**base, "happy": round(min(1.0, level + delta), 2)}),
                                  completed_by=users[name], lead_time=5.0)  # fmt: skip
    ls.annotations.create(
        id=tasks[0].id, result=_result({**base, "happy": 1.0, "sad": 1.0}), completed_by=users["ann3"]
    )
    ls.annotations.create(id=tasks[1].id, result=[], completed_by=users["ann3"], was_cancelled=True)
    ls.annotations.create(id=tasks[2].id, result=_result(base, unusable=True), completed_by=users["ann3"])
    ls.annotations.create(id=tasks[3].id, result=_result({**base, "happy": 0.33, "sad": 1.7}),
                          completed_by=users["ann3"])  # fmt: skip

    info = sync.sync(layout, settings)
    assert info["by_status"] == {"submitted": 2 * eligible + 1, "skipped": 1, "unusable": 1}
    assert info["quarantined"] == 1
    (bad,) = [f for f in tables.read_table(layout, "failures").to_pylist() if f["stage"] == "annotations"]
    assert bad["reason"] == "malformed_annotation" and "off the 0.05 step" in bad["detail"] and "1.7" in bad["detail"]
    before = tables.read_partition(layout, "annotations", "all")
    again = sync.sync(layout, settings)
    assert again["annotations"] == before.num_rows and again["new_versions"] == 0
    assert tables.read_partition(layout, "annotations", "all").equals(before)  # a rerun changes nothing

    report = build_affect_scores(layout)
    assert report.human == eligible
    rows = tables.read_partition(layout, "annotations", "all").to_pylist()
    happy = {(r["face_id"], r["annotator"]): r["happy"] for r in rows if r["status"] == "submitted"}
    faces = sorted({f for f, _ in happy})
    two = np.array([[happy.get((f, a), np.nan) for a in ("ann1@ffe.local", "ann2@ffe.local")] for f in faces])
    alpha_two = krippendorff_alpha_interval(two)
    assert alpha_two > 0.95  # ann1 and ann2 agree on every face ...
    assert 0.2 < report.alpha["happy"] < alpha_two - 0.1  # ... and ann3's one outlier shows
    scores = {r["face_id"]: r for r in tables.read_table(layout, "affect_scores").to_pylist()}
    face0 = scores[tasks[0].data["face_id"]]
    assert face0["source"] == "human" and face0["n_annotators"] == 3
    assert face0["happy"] == pytest.approx(0.125, abs=0.06) and face0["sad"] < 0.1  # the outlier barely counts

    # An edit replaces the annotator's earlier value.
    (ann,) = [a for a in ls.annotations.list(id=tasks[4].id) if a.completed_by == users["ann1"]]
    ls.annotations.update(id=ann.id, result=_result({**base, "happy": 0.95}))
    sync.sync(layout, settings)
    rows = tables.read_partition(layout, "annotations", "all").to_pylist()
    (edited,) = [r for r in rows if r["annotation_id"] == ann.id]
    assert edited["happy"] == pytest.approx(0.95) and len(rows) == before.num_rows
    versions = [
        r["happy"] for r in tables.read_table(layout, "annotation_history").to_pylist() if r["annotation_id"] == ann.id
    ]
    assert len(versions) == 2 and versions[-1] == pytest.approx(0.95)  # the earlier value is kept


def test_bad_token_and_unreachable_server_are_clear_errors(built, label_studio, capsys, monkeypatch):
    layout = built
    with pytest.raises(lsapi.LabelStudioError, match="refused the token"):
        sync.setup(layout, _settings(layout, label_studio, "x", token="not-the-token"))
    with pytest.raises(lsapi.LabelStudioError, match="did not answer"):
        sync.setup(layout, _settings(layout, label_studio, "x", url="http://127.0.0.1:9", attempts=2))
    monkeypatch.setenv("FFE_LABEL_STUDIO_URL", label_studio[0])
    monkeypatch.setenv("FFE_LABEL_STUDIO_TOKEN", "wrong-token-value")
    assert main(["annotate", "push", "--workdir", str(layout.root)]) == 1
    err = capsys.readouterr().err
    assert "refused the token" in err and "wrong-token-value" not in err  # the token is never shown


def test_ffe_annotate_cli_round_trip(built, label_studio, capsys, monkeypatch):
    monkeypatch.setenv("FFE_LABEL_STUDIO_URL", label_studio[0])
    monkeypatch.setenv("FFE_LABEL_STUDIO_TOKEN", label_studio[1])
    work = str(built.root)
    assert main(["annotate", "setup", "--workdir", work]) == 0
    assert main(["annotate", "push", "--workdir", work]) == 0
    assert main(["annotate", "push", "--workdir", work]) == 0
    out = capsys.readouterr().out
    assert "pushed 0 new task(s)" in out.splitlines()[-1]
    assert main(["annotate", "sync", "--workdir", work]) == 0
    assert main(["annotate", "report", "--workdir", work]) == 0
    out = capsys.readouterr().out
    assert "category    alpha" in out and (built.root / "reports" / "annotation_scores.png").is_file()


def test_sync_rides_out_a_server_restart(built, tmp_path_factory):
    import secrets
    import threading
    import time

    from annotation.local_server import start
    from tests.conftest import free_port, label_studio_binary

    binary, port, token, password = label_studio_binary(), free_port(), secrets.token_hex(20), secrets.token_hex(8)
    data, root = tmp_path_factory.mktemp("ls-restart"), tmp_path_factory.getbasetemp()
    servers = [start(binary, data, port, token=token, password=password, document_root=root)]
    try:
        layout = built
        settings = sync.settings_from_env(layout, url=servers[0].url, token=token, project_title="restart", attempts=9)
        pushed = sync.push(layout, settings)["pushed"]
        servers[0].stop()  # down ...

        def restart():
            time.sleep(2)  # ... for a while, then back with the same data
            servers.append(start(binary, data, port, token=token, password=password, document_root=root))

        thread = threading.Thread(target=restart)
        thread.start()
        info = sync.sync(layout, settings)  # retries with backoff until the server answers again
        thread.join()
        assert len(servers) == 2 and info["annotations"] == 0
        again = sync.push(layout, settings)
        assert again["pushed"] == 0 and again["eligible_faces"] == pushed  # nothing lost, nothing twice
    finally:
        for server in servers:
            server.stop()


def test_gold_tasks_measure_annotators_and_weight_the_consensus(built, label_studio, tmp_path, capsys):
    layout = built
    faces = [f["face_id"] for f in sync.eligible_faces(layout)]
    gold_faces = faces[:2]
    csv = tmp_path / "gold.csv"
    lines = ["face_id," + ",".join(CATEGORIES)]
    lines += [f"{f}," + ",".join("0.6" if c == "happy" else "0.0" for c in CATEGORIES) for f in gold_faces]
    csv.write_text("\n".join(lines) + "\n")
    assert main(["annotate", "gold", str(csv), "--workdir", str(layout.root)]) == 0
    assert "2 gold face(s) loaded" in capsys.readouterr().out

    settings = _settings(layout, label_studio, "FFE gold round", gold_rate=0.5)
    info = sync.push(layout, settings)
    assert info["gold_tasks"] == round(0.5 * len(faces)) and info["pushed"] == len(faces) + info["gold_tasks"]
    assert sync.push(layout, settings)["pushed"] == 0

    ls = lsapi.connect(settings)
    project = lsapi.ensure_project(ls, settings)
    org = ls.users.whoami().active_organization
    good = ls.users.create(username="good", email="good@ffe.local", active_organization=org).id
    sloppy = ls.users.create(username="sloppy", email="sloppy@ffe.local", active_organization=org).id
    tasks = lsapi._all_tasks(ls, project, settings)
    base = dict.fromkeys(CATEGORIES, 0.0)
    for task in tasks:
        if task.data.get("gold"):  # good is close to the gold scores, sloppy far off
            ls.annotations.create(id=task.id, result=_result({**base, "happy": 0.6}), completed_by=good)
            ls.annotations.create(id=task.id, result=_result({**base, "happy": 0.1, "sad": 0.5}), completed_by=sloppy)
    target = next(t for t in tasks if not t.data.get("gold") and t.data["face_id"] not in gold_faces)
    ls.annotations.create(id=target.id, result=_result({**base, "happy": 0.8}), completed_by=good)
    ls.annotations.create(id=target.id, result=_result({**base, "happy": 0.2}), completed_by=sloppy)

    info = sync.sync(layout, settings)
    assert info["gold_ratings"] == 2 * round(0.5 * len(faces)) and info["annotations"] == 2
    quality = {r["annotator"]: r for r in tables.read_table(layout, "annotator_quality").to_pylist()}
    assert quality["good@ffe.local"]["gold_mae"] == pytest.approx(0.0, abs=1e-6)
    assert quality["sloppy@ffe.local"]["gold_mae"] == pytest.approx((0.5 + 0.5) / 12, abs=1e-6)
    assert quality["good@ffe.local"]["reliability"] > 2 * quality["sloppy@ffe.local"]["reliability"]

    build_affect_scores(layout)
    scores = {r["face_id"]: r for r in tables.read_table(layout, "affect_scores").to_pylist()}
    assert scores[target.data["face_id"]]["happy"] > 0.7  # the reliable annotator carries the consensus
    assert set(scores) >= set(faces)  # gold copies add no rows of their own


def test_round_trips_never_lose_or_duplicate(built, label_studio, capsys, monkeypatch):
    """Issue 17: two pushes at once, exact slider values, a `"value": null` annotation, untouched
    sliders, copies raced in from elsewhere, and a task deleted in Label Studio."""
    import contextlib
    import threading

    layout = built
    settings = _settings(layout, label_studio, "FFE round trips")
    faces = [f["face_id"] for f in sync.eligible_faces(layout)]

    # 1. Two pushes at once (a person and `ffe ui`): each face gets one task.
    barrier, results = threading.Barrier(2), []

    def push():
        barrier.wait()
        results.append(sync.push(layout, settings)["pushed"])

    threads = [threading.Thread(target=push) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, len(faces)]
    ls = lsapi.connect(settings)
    project = lsapi.ensure_project(ls, settings)
    tasks = lsapi._all_tasks(ls, project, settings)
    per_face = {f: sum(t.data["face_id"] == f for t in tasks) for f in faces}
    assert set(per_face.values()) == {1}

    # 2. Pre-labels reach the slider as the step's exact decimal.
    numbers = [r["value"]["number"] for t in tasks for p in t.predictions for r in p.result]
    assert len(numbers) == 12 * len(faces) and all(len(repr(v)) <= 4 and v == round(v, 2) for v in numbers)

    org = ls.users.whoami().active_organization
    ann = {n: ls.users.create(username=n, email=f"{n}@ffe.local", active_organization=org).id for n in ("a1", "a2")}
    by_face = {t.data["face_id"]: t for t in tasks}
    base = dict.fromkeys(CATEGORIES, 0.0)
    ls.annotations.create(id=by_face[faces[0]].id, result=_result(base | {"happy": 0.5}), completed_by=ann["a1"])
    # 3. One result item with "value": null: Label Studio may answer 500, but it stores it.
    with contextlib.suppress(Exception):  # the server's answer varies; what it stored is what counts
        ls.annotations.create(id=by_face[faces[1]].id, completed_by=ann["a1"],
                              result=[{"from_name": "happy", "to_name": "image", "type": "number", "value": None}],
                              request_options={"max_retries": 0})  # fmt: skip
    # 4. Sliders left untouched: only happy set; and one with nothing set at all.
    ls.annotations.create(id=by_face[faces[2]].id, result=_result({"happy": 0.7}), completed_by=ann["a1"])
    ls.annotations.create(id=by_face[faces[3]].id, result=[], completed_by=ann["a2"])
    info = sync.sync(layout, settings)
    failed = [f for f in tables.read_table(layout, "failures").to_pylist() if f["stage"] == "annotations"]
    assert len(failed) == 1, failed
    (bad,) = failed
    null_ann = [a for a in ls.annotations.list(id=by_face[faces[1]].id)]
    assert bad["reason"] == "malformed_annotation" and "happy: value is None" in bad["detail"]
    assert bad["item"] == f"task {by_face[faces[1]].id} annotation {null_ann[0].id}"
    assert info["by_status"] == {"submitted": 2, "empty": 1} and info["quarantined"] == 1  # the rest synced
    assert info["not_rated"] == {c: 1 for c in CATEGORIES if c != "happy"}
    rows = {r["face_id"]: r for r in tables.read_table(layout, "annotations").to_pylist()}
    assert rows[faces[2]]["happy"] == pytest.approx(0.7) and rows[faces[2]]["sad"] is None

    # 1b. Copies raced in from another machine: the unannotated one is deleted by the next push,
    # an annotated one stays and is reported by sync.
    copies = [lsapi.task_payload(f, by_face[f].data["image"], None, "") for f in (faces[4], faces[5])]
    lsapi.import_tasks(ls, project, copies, settings)
    copy5 = max(t.id for t in lsapi._all_tasks(ls, project, settings) if t.data["face_id"] == faces[5])
    ls.annotations.create(id=copy5, result=_result(base), completed_by=ann["a2"])
    info = sync.sync(layout, settings)
    assert info["faces_with_several_tasks"] == 2
    again = sync.push(layout, settings)
    assert again["pushed"] == 0 and again["duplicates_removed"] == 1
    info = sync.sync(layout, settings)
    several = [f for f in tables.read_table(layout, "failures").to_pylist() if f["reason"] == "several_tasks"]
    assert info["faces_with_several_tasks"] == 1 and several[0]["item"] == f"face {faces[5]}"
    assert str(copy5) in several[0]["detail"]

    # 5. A task deleted in Label Studio: recorded (with its annotation's last version), not pushed
    # again unless asked.
    ls.tasks.delete(id=str(by_face[faces[0]].id))
    info = sync.sync(layout, settings)
    assert info["deleted_tasks"] == 1 and info["deleted_annotations"] == 1
    history = [r for r in tables.read_table(layout, "annotation_history").to_pylist() if r["status"] == "deleted"]
    assert [(r["face_id"], r["happy"]) for r in history] == [(faces[0], 0.5)]
    record = {r["face_id"]: r for r in tables.read_table(layout, "label_studio_tasks").to_pylist()}
    assert record[faces[0]]["deleted_at"] is not None and record[faces[0]]["deletions"] == 1
    from annotation.report import annotation_report

    report = annotation_report(layout)  # what `ffe annotate report` shows
    assert report["label_studio"] == {"deleted_tasks": 1, "deleted_annotations": 1, "faces_with_several_tasks": 1}
    assert report["not_usable"]["several_tasks"] == 1 and report["not_usable"]["malformed_annotation"] == 1
    info = sync.push(layout, settings)
    assert info["pushed"] == 0 and info["deleted_not_pushed"] == 1
    monkeypatch.setenv("FFE_LABEL_STUDIO_URL", label_studio[0])
    monkeypatch.setenv("FFE_LABEL_STUDIO_TOKEN", label_studio[1])
    capsys.readouterr()
    work = ["--workdir", str(layout.root), "--settings", str(layout.root / "round-trips.yaml")]
    (layout.root / "round-trips.yaml").write_text("label_studio:\n  project_title: FFE round trips\n")
    assert main(["annotate", "push", *work, "--recreate-deleted"]) == 0
    out = capsys.readouterr().out
    assert "pushed 1 new task(s)" in out and "1 of them had been deleted in Label Studio" in out
    record = {r["face_id"]: r for r in tables.read_table(layout, "label_studio_tasks").to_pylist()}
    assert record[faces[0]]["deleted_at"] is None and record[faces[0]]["deletions"] == 1
