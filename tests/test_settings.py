"""How a work folder is built: one typed settings file, environment variables over it, flags over
both; `ffe build` and `ffe ui` remember what they ran with, so the daemon builds the same way."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from pipelines import settings
from pipelines.cli import main
from pipelines.definitions import build_definitions
from pipelines.errors import FFEError
from tests.conftest import REPO

NO_ENV: dict[str, str] = {}


def test_layers_defaults_file_env_flags_and_where_each_value_came_from(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    (work / "settings.yaml").write_text("bench:\n  judge: vlm\n  vlm_path: models/vlm\ninput:\n  domain: anime\n")
    env = {"FFE_JUDGE": "synthetic", "FFE_TRAIN_PROCESSES": "4", "FFE_LABEL_STUDIO_TOKEN": "s3cret"}
    eff = settings.load(work, env=env, flags={"input.pre_cropped": True, "input.domain": None})
    s = eff.settings
    assert (s.bench.judge, s.train.processes, s.input.domain, s.input.pre_cropped) == ("synthetic", 4, "anime", True)
    assert s.bench.vlm_path == str(work.resolve() / "models" / "vlm")  # relative to the work folder
    assert eff.sources["bench.judge"] == "env $FFE_JUDGE" and eff.sources["input.pre_cropped"] == "command line"
    assert eff.sources["input.domain"].startswith("file ") and eff.sources["train.recipe"] == "default"
    shown = {r["key"]: r for r in settings.show(eff)}
    assert shown["label_studio.token"]["value"] == "****" and "s3cret" not in repr(settings.show(eff))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bench:\n  judje: face\n", "unknown key 'bench.judje'; did you mean 'bench.judge'?"),
        ("bensh:\n  judge: face\n", "unknown section 'bensh'; did you mean 'bench'?"),
        ("bench:\n  judge: facee\n", "setting bench.judge = 'facee' (from file"),
        ("train:\n  processes: 0\n", "setting train.processes = 0"),
        ("label_studio:\n  token: abc\n", "never read from a file: set $FFE_LABEL_STUDIO_TOKEN"),
        ("- a list\n", "must be a mapping"),
        ("bench: [\n", "not valid YAML"),
    ],
)
def test_a_bad_settings_file_is_one_error_naming_the_key(tmp_path, text, message):
    (tmp_path / "settings.yaml").write_text(text)
    with pytest.raises(FFEError, match=message.replace("$", r"\$").replace("?", r"\?").replace("(", r"\(")):
        settings.load(tmp_path, env=NO_ENV)


def test_a_bad_environment_value_names_its_variable(tmp_path):
    with pytest.raises(FFEError, match=r"setting generator.steps = 'many' \(from env \$FFE_GENERATOR_STEPS\)"):
        settings.load(tmp_path, env={"FFE_GENERATOR_STEPS": "many"})


def test_ffe_build_remembers_how_the_folder_was_built(tmp_path, monkeypatch, capsys):
    """Found: a folder built with FFE_JUDGE=synthetic and --pre-cropped was benched with the face
    judge and cropped again under `ffe ui`, which knew neither."""
    work, inp = tmp_path / "world", tmp_path / "world" / "input"
    inp.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FFE_JUDGE", "synthetic")
    args = ["--workdir", "world", "--input", "world/input", "--pre-cropped", "--select", "raw_images"]
    assert main(["build", *args]) == 0
    assert "remembered in" in capsys.readouterr().out
    stored = yaml.safe_load((work / "settings.yaml").read_text())
    assert stored["bench"]["judge"] == "synthetic" and stored["input"] == {"folder": "input", "pre_cropped": True}
    monkeypatch.delenv("FFE_JUDGE")
    # What `ffe ui` runs: `dagster dev` loading the definitions with only FFE_WORKDIR set.
    code = ("from pipelines.definitions import defs; r = defs.resources; "
            "print(r['pixelsmile'].judge, r['ffe'].pre_cropped, r['ffe'].input_dir)")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("FFE_")} | {"FFE_WORKDIR": str(work)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["synthetic", "True", str(inp.resolve())], out.stderr[-2000:]
    # A moved folder still finds its input inside it.
    moved = tmp_path / "moved"
    work.rename(moved)
    assert settings.load(moved, env=NO_ENV).input_path == (moved / "input").resolve()


def test_ffe_settings_show_set_and_unset(tmp_path, capsys):
    work = str(tmp_path / "w")
    assert main(["settings", "set", "bench.judge", "synthetic", "--workdir", work]) == 0
    assert main(["settings", "set", "generator.steps", "12", "--workdir", work]) == 0
    assert main(["settings", "set", "bench.judg", "face", "--workdir", work]) == 1
    assert "did you mean 'bench.judge'" in capsys.readouterr().err
    assert main(["settings", "set", "label_studio.token", "x", "--workdir", work]) == 1
    assert "never stored" in capsys.readouterr().err
    assert main(["settings", "show", "--workdir", work, "--json"]) == 0
    rows = {r["key"]: r for r in __import__("json").loads(capsys.readouterr().out)}
    assert rows["bench.judge"]["value"] == "synthetic" and rows["generator.steps"]["value"] == 12
    assert rows["bench.judge"]["source"].startswith("file ") and rows["bench.judge"]["env"] == "FFE_JUDGE"
    assert main(["settings", "unset", "bench.judge", "--workdir", work]) == 0
    assert settings.load(work, env=NO_ENV).settings.bench.judge == "face"


def test_definitions_read_the_settings_file_and_env_overrides_it(tmp_path, monkeypatch):
    (tmp_path / "settings.yaml").write_text("bench:\n  judge: synthetic\nprelabels:\n  scorer: synthetic\n")
    defs = build_definitions(str(tmp_path))
    assert defs.resources["pixelsmile"].judge == "synthetic"
    assert defs.resources["prelabel_scorer"].scorer == "synthetic"
    monkeypatch.setenv("FFE_JUDGE", "face")
    assert build_definitions(str(tmp_path)).resources["pixelsmile"].judge == "face"


def test_a_build_that_cannot_start_remembers_nothing(tmp_path, monkeypatch, capsys):
    """Found (new-user trial): a mistyped --input was saved before the build failed, so every later
    build of the folder failed the same way."""
    work = tmp_path / "w"
    assert main(["build", "--workdir", str(work), "--input", str(tmp_path / "inptu")]) == 1
    assert "does not exist" in capsys.readouterr().err and not (work / "settings.yaml").exists()
    monkeypatch.setenv("FFE_TRAIN_RECIPE", str(tmp_path / "no-recipe.yaml"))
    assert main(["build", "--workdir", str(work), "--select", "raw_images"]) == 1
    err = capsys.readouterr().err
    assert "setting train.recipe" in err and "no such file" in err and not (work / "settings.yaml").exists()


def test_settings_edge_values(tmp_path, capsys):
    work = str(tmp_path / "w")
    # Text settings take the value as given (not as YAML).
    assert main(["settings", "set", "label_studio.project_title", "My: project # 1", "--workdir", work]) == 0
    assert main(["settings", "set", "label_studio.project_title", "123", "--workdir", work]) == 0
    assert settings.load(work, env=NO_ENV).settings.label_studio.project_title == "123"
    capsys.readouterr()
    # show KEY / a section; an unknown one is an error
    assert main(["settings", "show", "bench.judge", "--workdir", work]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["bench.judge"]
    assert main(["settings", "show", "bench", "--workdir", work]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert main(["settings", "show", "bench.judje", "--workdir", work]) == 1
    assert "did you mean 'bench.judge'" in capsys.readouterr().err
    # set with --settings writes that file, and show with it reads it back
    alt = tmp_path / "alt.yaml"
    alt.write_text("")
    assert main(["settings", "set", "bench.judge", "vlm", "--workdir", work, "--settings", str(alt)]) == 0
    assert "vlm" in alt.read_text() and settings.load(work, env=NO_ENV).settings.bench.judge == "face"
    (tmp_path / "w" / "settings.yaml").write_text("bench:\n  judge: face\n  judge: vlm\n")
    with pytest.raises(FFEError, match="'judge' is given twice"):
        settings.load(work, env=NO_ENV)
    (tmp_path / "w" / "settings.yaml").write_text("input:\n  settle_seconds: .inf\ntrain:\n  processes: 0\n")
    with pytest.raises(FFEError, match=r"input.settle_seconds = inf .*; setting train.processes = 0"):
        settings.load(work, env=NO_ENV)  # every problem at once
    (tmp_path / "w" / "settings.yaml").write_text("label_studio:\n  url: http://me:pw@ls.example:8080\n")
    shown = {r["key"]: r["value"] for r in settings.show(settings.load(work, env=NO_ENV))}
    assert shown["label_studio.url"] == "http://****@ls.example:8080"
    assert settings.unknown_env({"FFE_JUGDE": "x", "FFE_WORKDIR": "w"}) == [
        "$FFE_JUGDE is not a setting; did you mean $FFE_JUDGE?"
    ]
    with pytest.raises(FFEError, match="is a folder, not a file"):
        settings.load(work, file=tmp_path, env=NO_ENV)


def test_piping_into_head_is_not_an_error(tmp_path):
    done = subprocess.run(f"{sys.executable} -m pipelines.cli settings show --workdir {tmp_path} | head -1",
                          shell=True, cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.stdout.startswith("input.folder") and "Broken pipe" not in done.stderr


def test_workers_from_a_flag_or_a_variable_are_for_that_run_only(tmp_path):
    """`--workers 5` or FFE_BUILD_WORKERS=2 of one run is not remembered (found: a one-off 5 on a
    2-core machine stuck for every later build); `ffe settings set` stores it, and a flag then
    leaves the stored value alone."""
    eff = settings.load(tmp_path, env={"FFE_BUILD_WORKERS": "2"}, flags={"build.workers": 5})
    assert eff.settings.build.workers == 5 and eff.sources["build.workers"] == "command line"
    assert settings.save(eff) == [] and not (tmp_path / settings.SETTINGS_FILE).exists()
    settings.set_value(tmp_path, "build.workers", "3")
    eff = settings.load(tmp_path, env={}, flags={"build.workers": 7})
    assert eff.settings.build.workers == 7
    settings.save(eff)
    assert settings.load(tmp_path, env={}).settings.build.workers == 3


@pytest.mark.parametrize(
    ("key", "content", "message"),
    [
        ("train.recipe", "max_steps: abc\n", "training recipe {path}: max_steps must be an integer, not 'abc'"),
        ("train.recipe", None, "{path}: no such file or folder"),
        ("bench.config", "bootstrap: [1]\n", "bench config {path}: bootstrap must be an integer of at least 1"),
        ("bench.config", "[1, 2]\n", "bench config {path} must be a mapping of BenchConfig fields"),
        ("bench.config", "alphas: [0.5, 0.2]\n", "alphas must be non-negative and increasing"),
        ("generator.path", None, "{path}: no such file or folder"),
    ],
)
def test_settings_set_refuses_a_file_that_cannot_be_used_and_saves_nothing(tmp_path, key, content, message):
    """`ffe settings set train.recipe bad.yaml` saved it; only the next build refused it."""
    path = tmp_path / "file.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(FFEError) as err:
        settings.set_value(tmp_path / "work", key, str(path))
    assert str(err.value).startswith(f"setting {key}: ") and message.format(path=path) in str(err.value)
    assert str(err.value).endswith("; nothing saved") and not (tmp_path / "work" / settings.SETTINGS_FILE).exists()
    path.write_text("max_steps: 30\n" if key == "train.recipe" else "bootstrap: 50\n")
    if key != "generator.path":
        assert settings.set_value(tmp_path / "work", key, str(path)).flat[key] == str(path)


def test_settings_set_takes_options_anywhere_and_stores_the_checked_value(tmp_path, capsys):
    """Found by a new user: `ffe settings set --workdir W KEY VALUE` was "unrecognized arguments";
    `generator.steps 1e3` was stored as 1000.0; `nan` for a number was "should be <= 3600"."""
    work = str(tmp_path / "work")
    assert main(["settings", "set", "--workdir", work, "generator.steps", "1e3"]) == 0
    assert yaml.safe_load((tmp_path / "work" / "settings.yaml").read_text())["generator"]["steps"] == 1000
    assert main(["settings", "set", "input.settle_seconds", "nan", "--workdir", work]) == 1
    said = "input.settle_seconds = 'nan' (from the value given): Input should be a finite number"
    assert said in capsys.readouterr().err
