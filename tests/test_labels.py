"""Labelled collections: a labels.csv beside the images gives their identities and intensities; rows
that cannot be used are quarantined with their reason; the rest counts."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from curation.batches import manifests, register_new_batch
from curation.identities import labelled_identity_id
from pipelines.build import build
from pixelsmile.synthetic import png, random_identity, render, write_world_input
from storage import tables
from storage.layout import Layout
from storage.schemas import CATEGORIES


def _scores(**given: float) -> list[float]:
    return [given.get(c, 0.0) for c in CATEGORIES]


@pytest.fixture
def labelled_input(tmp_path):
    """Two people, three faces each, and a label file with one good row per face plus bad ones."""
    folder = tmp_path / "input"
    rng = np.random.default_rng(0)
    rows = []
    for person in ("ann", "bob"):
        who = random_identity(rng)
        for k, scores in enumerate([_scores(), _scores(happy=0.8), _scores(surprised=0.6, fear=0.2)]):
            path = folder / person / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png(render(who, np.array(scores), 128)))
            rows.append([f"{person}/{k}.png", person, *scores])
    rows += [
        ["ann/0.png", "ann", *_scores()],  # named twice
        ["nobody.png", "x", *_scores()],  # no such file
    ]
    with open(folder / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["file", "identity", *CATEGORIES], *rows])
    return folder


def test_label_files_register_with_images_and_are_not_images(tmp_path, labelled_input):
    layout = Layout.at(tmp_path / "w")
    manifest = register_new_batch(layout, labelled_input, pre_cropped=True)
    assert [f.path for f in manifest.label_files] == [str(labelled_input / "labels.csv")]
    assert all(not f.path.endswith(".csv") for f in manifest.files) and len(manifest.files) == 6
    # An edited label file alone makes no batch: it waits for new images to come with.
    (labelled_input / "labels.csv").write_text((labelled_input / "labels.csv").read_text() + "\n")
    assert register_new_batch(layout, labelled_input) is None
    assert len(manifests(layout)) == 1


def test_imported_identities_and_scores_flow_into_curation_and_prelabels(tmp_path, labelled_input):
    layout = Layout.at(tmp_path / "w")
    report = build(layout, labelled_input, "+affect_scores", echo=lambda _: None, pre_cropped=True)
    assert report.ok, report.failed

    imported = tables.read_table(layout, "imported_labels").to_pylist()
    assert len(imported) == 6 and {r["identity"] for r in imported} == {"ann", "bob"}
    failures = [r for r in tables.read_table(layout, "failures").to_pylist() if r["stage"] == "labels"]
    assert sorted(r["reason"] for r in failures) == ["labelled_twice", "unknown_file"]
    assert all("labels.csv" in r["detail"] for r in failures)

    # Identities are the labels' own, whatever a face recogniser makes of drawn faces.
    faces = tables.read_table(layout, "faces").select(["face_id", "image_id"]).to_pylist()
    identity_of = {r["face_id"]: r["identity_id"] for r in tables.read_table(layout, "identities").to_pylist()}
    label_of = {r["image_id"]: r for r in imported}
    for face in faces:
        if face["face_id"] in identity_of:
            assert identity_of[face["face_id"]] == labelled_identity_id(label_of[face["image_id"]]["identity"])
    duplicates = [r for r in tables.read_table(layout, "identities").to_pylist() if r["duplicate_of"]]
    assert not duplicates  # same person, different expressions: different pictures

    prelabels = {r["face_id"]: r for r in tables.read_table(layout, "prelabels").to_pylist()}
    for face in faces:
        label, pre = label_of[face["image_id"]], prelabels[face["face_id"]]
        assert pre["model_version"] == "imported"
        assert [pre[c] for c in CATEGORIES] == pytest.approx([label[c] for c in CATEGORIES], abs=1e-6)


def test_a_label_file_with_some_score_columns_is_refused_whole(tmp_path):
    folder = tmp_path / "input"
    write_world_input(folder, people=2, faces_per_person=2)
    label_file = folder / "world-0" / "labels.csv"
    lines = label_file.read_text().splitlines()
    cut = [",".join(line.split(",")[:-1]) for line in lines]  # no `anxious` column
    label_file.write_text("\n".join(cut) + "\n")
    layout = Layout.at(tmp_path / "w")
    report = build(layout, folder, "raw_images", echo=lambda _: None, pre_cropped=True)
    assert report.ok
    assert tables.read_table(layout, "imported_labels").num_rows == 0
    (failure,) = [r for r in tables.read_table(layout, "failures").to_pylist() if r["stage"] == "labels"]
    assert failure["reason"] == "bad_label_columns" and "anxious" in failure["detail"]


def test_a_score_outside_zero_one_quarantines_that_row_only(tmp_path):
    folder = tmp_path / "input"
    write_world_input(folder, people=1, faces_per_person=3)
    label_file = folder / "world-0" / "labels.csv"
    rows = list(csv.reader(label_file.open()))
    rows[2][2] = "1.5"  # second face: happy 1.5
    with open(label_file, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    layout = Layout.at(tmp_path / "w")
    assert build(layout, folder, "raw_images", echo=lambda _: None, pre_cropped=True).ok
    assert tables.read_table(layout, "imported_labels").num_rows == 2
    (failure,) = [r for r in tables.read_table(layout, "failures").to_pylist() if r["stage"] == "labels"]
    assert failure["reason"] == "bad_score" and "happy outside [0, 1]" in failure["detail"]
    assert failure["item"].endswith("labels.csv:3")


def _world_rows(folder):
    """The world's label rows as written (header first) and the file they sit in."""
    label_file = folder / "world-0" / "labels.csv"
    return list(csv.reader(label_file.open())), label_file


def _import(tmp_path, folder) -> tuple[list[dict], list[dict]]:
    layout = Layout.at(tmp_path / "w")
    assert build(layout, folder, "raw_images", echo=lambda _: None, pre_cropped=True).ok
    labels = tables.read_table(layout, "imported_labels").to_pylist()
    failures = [r for r in tables.read_table(layout, "failures").to_pylist() if r["stage"] == "labels"]
    return labels, failures


def test_a_european_excel_export_semicolons_and_decimal_commas(tmp_path):
    """Found: a semicolon-delimited file with decimal commas crashed raw_images naming no file."""
    folder = tmp_path / "input"
    write_world_input(folder, people=2, faces_per_person=2)
    rows, label_file = _world_rows(folder)
    header = [h.capitalize() for h in rows[0]]  # `File;Identity;Happy;...` as a person types it
    body = [[r[0], r[1], *[v.replace(".", ",") for v in r[2:]]] for r in rows[1:]]
    label_file.write_text("\r\n".join(";".join(r) for r in [header, *body]) + "\r\n", encoding="utf-8-sig")
    labels, failures = _import(tmp_path, folder)
    assert failures == [] and len(labels) == 4
    expected = sorted(tuple(round(float(v), 4) for v in r[2:]) for r in rows[1:])
    assert sorted(tuple(round(r[c], 4) for c in CATEGORIES) for r in labels) == expected  # 0,9481 read as 0.9481


@pytest.mark.parametrize(("edit", "reason", "detail"), [
    (lambda rows: rows[1].append("extra"), "bad_row", "fields where the header has 14"),
    (lambda rows: rows[2].__setitem__(0, "../elsewhere.png"), "outside_collection", "outside the folder"),
    (lambda rows: rows[2].__setitem__(0, ""), "unknown_file", "no file named"),
    (lambda rows: rows[2].__setitem__(3, "n/a"), "bad_score", "must be numbers"),
])  # fmt: skip
def test_every_unused_row_is_a_failure_naming_file_and_line(tmp_path, edit, reason, detail):
    """Found: a row with one field too many crashed raw_images; rows naming a file outside the
    collection were skipped silently."""
    folder = tmp_path / "input"
    write_world_input(folder, people=1, faces_per_person=3)
    rows, label_file = _world_rows(folder)
    edit(rows)
    with open(label_file, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    labels, failures = _import(tmp_path, folder)
    (failure,) = failures
    assert failure["reason"] == reason and detail in failure["detail"] and failure["item"].startswith(str(label_file))
    assert len(labels) == 2  # the other rows count


@pytest.mark.parametrize(("header_edit", "detail"), [
    (lambda h: h.__setitem__(3, "happy"), "column 'happy' is given twice"),  # `sad` renamed into a duplicate
    (lambda h: h.__setitem__(3, "sadness"), "unknown column 'sadness'; did you mean 'sad'?"),
])  # fmt: skip
def test_a_duplicated_or_unknown_score_column_is_an_error_naming_it(tmp_path, header_edit, detail):
    """Found: a duplicated column silently kept the last; `Happy,Sad,...` columns were dropped."""
    folder = tmp_path / "input"
    write_world_input(folder, people=1, faces_per_person=2)
    rows, label_file = _world_rows(folder)
    header_edit(rows[0])
    with open(label_file, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    labels, failures = _import(tmp_path, folder)
    (failure,) = failures
    assert labels == [] and failure["reason"] == "bad_label_columns" and detail in failure["detail"]


def test_names_match_across_unicode_forms_backslashes_and_links(tmp_path):
    """Found: a CSV with NFD names for NFC files reported unknown_file with a name that looks the
    same; a row naming a symlink was bound to the link's target."""
    import unicodedata

    write_world_input(tmp_path / "input", people=1, faces_per_person=3)
    world = tmp_path / "input" / "world-0"
    rows, label_file = _world_rows(tmp_path / "input")
    files = [world / r[0] for r in rows[1:]]
    nfc = unicodedata.normalize("NFC", "Zoë")
    (world / nfc).mkdir()
    files[0].rename(world / nfc / "0.png")
    rows[1][0] = unicodedata.normalize("NFD", f"{nfc}\\\\0.png")  # NFD, and a Windows separator
    (world / "link.png").symlink_to(files[1])
    rows[2][0] = "link.png"  # the link is what was ingested; its target stays unlabelled
    with open(label_file, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    layout = Layout.at(tmp_path / "w")
    assert build(layout, tmp_path / "input", "raw_images", echo=lambda _: None, pre_cropped=True).ok
    labels = tables.read_table(layout, "imported_labels").to_pylist()
    images = {r["image_id"]: r["source_uri"] for r in tables.read_table(layout, "images").to_pylist()}
    labelled = sorted(images[r["image_id"]].split("world-0/")[-1] for r in labels)
    assert [r for r in tables.read_table(layout, "failures").to_pylist() if r["stage"] == "labels"] == []
    # The NFD, backslashed name found its NFC file; the link row labels the link (the target's image
    # is ingested once, from whichever path came first: its bytes are the same).
    assert f"{nfc}/0.png" in labelled and len(labels) == 3, labelled
