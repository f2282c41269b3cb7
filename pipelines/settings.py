"""How a work folder is built: one typed settings file, `<workdir>/settings.yaml`.

Each value comes from the first of these that sets it (later layers override earlier ones):

    defaults  <  the settings file (the work folder's, or `--settings FILE`)  <  $FFE_* variables  <  flags

`ffe build` and `ffe ui` write what they ran with back into the work folder's file (secrets never),
so the daemon and the next build work the way the last build did: a folder built with
`FFE_JUDGE=synthetic ffe build --pre-cropped` keeps being judged synthetically under `ffe ui`.
`ffe settings show` prints every effective value and where it came from.

Why our own loader over pydantic-settings: we need each value's source (for `settings show`), the
project's flat `FFE_*` names for nested keys, and an error that names the nearest known key; pydantic
(which Dagster already brings) does the typing and validation.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.errors import FFEError
from storage import yamlfile
from storage.atomic import atomic_write_text

SETTINGS_FILE = "settings.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class InputSettings(_Section):
    """The input folder the `new_input_files` sensor watches, and what its new batches are."""

    folder: str = Field("", description="input folder; relative paths are inside the work folder; '' = <workdir>/input")
    domain: Literal["real", "anime"] = Field("real", description="what new batches are")
    pre_cropped: bool = Field(False, description="each new image is one face: taken whole where none is found")
    whole_images: bool = Field(False, description="each new image is one face taken whole, no face detection "
                               "(a synthetic world, faces aligned already)")
    settle_seconds: float = Field(2.0, ge=0, le=3600, description="a file changed this recently may still be copied in")
    follow_links: bool = Field(False, description="read input files through links that leave the input folder")


class BuildSettings(_Section):
    """How `ffe build` uses the machine (docs/scale.md)."""

    workers: int = Field(1, ge=1, le=256, description="batch partitions built at once, each its own run and process")


class TrainSettings(_Section):
    """How each release's model is trained (docs/model.md)."""

    recipe: str = Field("", description="a YAML of TrainConfig fields; '' = the tiny pixel model")
    launcher: Literal["accelerate", "python"] = Field("accelerate", description="how the trainer is launched")
    processes: int = Field(1, ge=1, description="training processes (one per GPU)")


class BenchSettings(_Section):
    """How each release's model is benched (docs/bench.md)."""

    judge: Literal["face", "synthetic", "vlm"] = Field("face", description="the expression and identity judge")
    vlm_path: str = Field("", description="judge vlm: a local vision-language model folder")
    config: str = Field("", description="a YAML of BenchConfig fields; '' = the defaults")


class PrelabelSettings(_Section):
    """What scores faces for their pre-labels (docs/annotation.md)."""

    scorer: Literal["face", "vlm", "synthetic"] = Field("face", description="the pre-label scorer")
    vlm_path: str = Field("", description="scorer vlm: a local vision-language model folder")


class GeneratorSettings(_Section):
    """The editing model that makes expression variants (docs/generation.md); no path: none."""

    kind: Literal["pixelsmile", "qwen-image-edit", "flux-kontext", "instruct-pix2pix", "generic", "pixel"] = Field(
        "pixelsmile", description="the kind of editing model"
    )
    path: str = Field("", description="a local model folder; '' = no generation")
    lora: str = Field("", description="a LoRA file or folder for kind pixelsmile")
    steps: int = Field(30, ge=1, description="sampling steps per variant")
    size: int = Field(512, ge=16, description="variant size in pixels")


class LabelStudioSettings(_Section):
    """The Label Studio server annotators work in; no URL: every face keeps its pre-label."""

    url: str = Field("", description="the server, e.g. http://127.0.0.1:8080")
    token: str = Field("", description="API token: only from $FFE_LABEL_STUDIO_TOKEN, never stored", repr=False)
    document_root: str = Field("", description="the server's local-files root; '' = the work folder")
    project_title: str = Field("FFE intensity", description="the project the tasks go to")
    overlap: int = Field(2, ge=1, description="annotators per task")
    gold_rate: float = Field(0.0, ge=0, description="hidden gold tasks per regular task")


class Settings(_Section):
    input: InputSettings = InputSettings()
    build: BuildSettings = BuildSettings()
    train: TrainSettings = TrainSettings()
    bench: BenchSettings = BenchSettings()
    prelabels: PrelabelSettings = PrelabelSettings()
    generator: GeneratorSettings = GeneratorSettings()
    label_studio: LabelStudioSettings = LabelStudioSettings()


# The environment variable of each key (the names the project has always used).
ENV: dict[str, str] = {
    "input.folder": "FFE_INPUT",
    "input.domain": "FFE_INPUT_DOMAIN",
    "input.pre_cropped": "FFE_INPUT_PRE_CROPPED",
    "input.whole_images": "FFE_INPUT_WHOLE_IMAGES",
    "input.follow_links": "FFE_INPUT_FOLLOW_LINKS",
    "build.workers": "FFE_BUILD_WORKERS",
    "train.recipe": "FFE_TRAIN_RECIPE",
    "train.launcher": "FFE_TRAIN_LAUNCHER",
    "train.processes": "FFE_TRAIN_PROCESSES",
    "bench.judge": "FFE_JUDGE",
    "bench.vlm_path": "FFE_VLM_PATH",
    "bench.config": "FFE_BENCH_CONFIG",
    "prelabels.scorer": "FFE_PRELABEL_SCORER",
    "prelabels.vlm_path": "FFE_PRELABEL_VLM_PATH",
    "generator.kind": "FFE_GENERATOR_KIND",
    "generator.path": "FFE_GENERATOR_PATH",
    "generator.lora": "FFE_GENERATOR_LORA",
    "generator.steps": "FFE_GENERATOR_STEPS",
    "generator.size": "FFE_GENERATOR_SIZE",
    "label_studio.url": "FFE_LABEL_STUDIO_URL",
    "label_studio.token": "FFE_LABEL_STUDIO_TOKEN",
    "label_studio.document_root": "FFE_LABEL_STUDIO_DOCUMENT_ROOT",
}
# How one command uses the machine, not how the folder is built: remembered only when set in the
# file (`ffe settings set`), never from a flag or a variable of one run.
PER_RUN = frozenset({"build.workers"})
SECRETS = frozenset({"label_studio.token"})  # from the environment only: never read from or written to a file
# Paths a person may give relative to where they stand: stored absolute, or relative to the work folder.
PATHS = frozenset({"input.folder", "train.recipe", "bench.vlm_path", "bench.config", "prelabels.vlm_path",
                   "generator.path", "generator.lora", "label_studio.document_root"})  # fmt: skip


def keys() -> list[str]:
    """Every settings key, dotted (`section.name`), in the file's order."""
    return [f"{s}.{k}" for s, sec in Settings.model_fields.items() for k in sec.annotation.model_fields]


def description(key: str) -> str:
    section, name = key.split(".")
    return Settings.model_fields[section].annotation.model_fields[name].description or ""


DEFAULTS: dict[str, Any] = {}


def _flat(settings: Settings) -> dict[str, Any]:
    return {k: getattr(getattr(settings, k.split(".")[0]), k.split(".")[1]) for k in keys()}


DEFAULTS.update(_flat(Settings()))


@dataclass
class Effective:
    """The settings a command runs with, and where each value came from ("default", "file PATH",
    "env $NAME" or "flag --name")."""

    settings: Settings
    sources: dict[str, str]
    workdir: Path
    file: Path  # the settings file read (it may not exist)
    flat: dict[str, Any] = field(default_factory=dict)

    def value(self, key: str) -> Any:
        return self.flat[key]

    @property
    def input_path(self) -> Path:
        """The input folder (absolute): input.folder, else <workdir>/input."""
        return Path(self.settings.input.folder or self.workdir / "input")


def resolve(workdir: Path, path: str) -> Path:
    """A stored path as an absolute one: relative paths are inside the work folder."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (workdir / p)


def nearest(key: str) -> str:
    """"; did you mean 'x'?" for the known key or section closest to `key`, else the known keys."""
    return _nearest(key, keys() + list(Settings.model_fields))


def _nearest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"


def _read_file(path: Path) -> dict[str, Any]:
    """The file's values, flat by dotted key; unknown keys and secrets are errors naming them."""
    if path.is_dir():
        raise FFEError(f"settings file {path} is a folder, not a file")
    try:
        raw = yamlfile.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as err:
        raise FFEError(f"settings file {path}: {getattr(err, 'strerror', None) or err}") from None
    except yaml.YAMLError as err:
        raise FFEError(f"settings file {path} is not valid YAML: {' '.join(str(err).split())}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise FFEError(f"settings file {path} must be a mapping of sections (input, train, bench, ...)")
    known, sections, flat = keys(), list(Settings.model_fields), {}
    for section, values in raw.items():
        if section not in sections:
            raise FFEError(f"settings file {path}: unknown section {section!r}{_nearest(str(section), sections)}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise FFEError(f"settings file {path}: {section} must be a mapping of keys to values")
        for name, value in values.items():
            key = f"{section}.{name}"
            if key not in known:
                raise FFEError(f"settings file {path}: unknown key {key!r}{_nearest(key, known)}")
            if key in SECRETS:
                raise FFEError(f"settings file {path}: {key} is never read from a file: set ${ENV[key]}")
            flat[key] = value
    return flat


def _env_values(env: Mapping[str, str]) -> dict[str, str]:
    return {key: env[name] for key, name in ENV.items() if env.get(name, "") != ""}


def _build(flat: dict[str, Any], sources: dict[str, str]) -> Settings:
    nested: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        section, name = key.split(".")
        nested.setdefault(section, {})[name] = value
    try:
        return Settings.model_validate(nested)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"][:2])
            shown = "****" if key in SECRETS else repr(flat.get(key, ""))
            problems.append(f"setting {key} = {shown} (from {sources.get(key, 'default')}): {e['msg']}")
        raise FFEError("; ".join(problems)) from None


def load(workdir: str | os.PathLike[str], *, file: str | os.PathLike[str] | None = None,
         env: Mapping[str, str] | None = None, flags: Mapping[str, Any] | None = None) -> Effective:  # fmt: skip
    """The effective settings of a work folder. `file` replaces the work folder's settings file;
    `flags` maps dotted keys to values given on the command line (None: not given)."""
    workdir = Path(workdir).expanduser().resolve()
    path = Path(file).expanduser().resolve() if file is not None else workdir / SETTINGS_FILE
    if file is not None and not path.exists():
        raise FFEError(f"settings file {path} does not exist")
    env = os.environ if env is None else env
    flat, sources = dict(DEFAULTS), dict.fromkeys(DEFAULTS, "default")
    # Relative paths: inside the work folder in a file; from where the command runs elsewhere.
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    for layer, where, base in ((_read_file(path), f"file {path}", workdir), (_env_values(env), "env", Path.cwd()),
                               (given, "command line", Path.cwd())):  # fmt: skip
        for key, value in layer.items():
            if key not in flat:
                raise FFEError(f"unknown setting {key!r}{_nearest(key, keys())}")
            if key in PATHS and value:
                value = os.path.normpath(resolve(base, str(value)))
            flat[key], sources[key] = value, f"env ${ENV[key]}" if where == "env" else where
    settings = _build(flat, sources)
    return Effective(settings, sources, workdir, path, _flat(settings))


def _stored(workdir: Path, key: str, value: Any) -> Any:
    """How an effective (absolute) path is written to the work folder's file: relative to the work
    folder when inside it (a copied or moved folder still finds it), else absolute."""
    if key not in PATHS or not value:
        return value
    p = Path(value)
    return p.relative_to(workdir).as_posix() if p.is_relative_to(workdir) else str(p)


def save(effective: Effective) -> list[str]:
    """Write the effective settings (all but defaults, secrets and PER_RUN keys from a flag or a
    variable) into the work folder's file;
    returns the keys whose stored value changed ("" when nothing did). Values from the file stay
    as written."""
    workdir = effective.workdir
    target = workdir / SETTINGS_FILE
    before = _read_file(target)
    after: dict[str, Any] = {}
    for key in keys():
        value, source = effective.flat[key], effective.sources[key]
        if key in SECRETS:
            continue
        if key in PER_RUN and not source.startswith("file "):  # this run's; the file keeps its own
            if key in before:
                after[key] = before[key]
            continue
        if source.startswith("file "):
            after[key] = before.get(key, value) if Path(source[5:]) == target else _stored(workdir, key, value)
        elif source != "default":
            after[key] = _stored(workdir, key, value)
    changed = [k for k in keys() if before.get(k) != after.get(k)]
    if changed:
        workdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, render_file(after))
    return changed


def render_file(flat: Mapping[str, Any]) -> str:
    nested: dict[str, dict[str, Any]] = {}
    for key in keys():
        if key in flat:
            section, name = key.split(".")
            nested.setdefault(section, {})[name] = flat[key]
    head = ("# How this work folder is built (pipelines/settings.py; `ffe settings show` lists every key).\n"
            "# Written by `ffe build`, `ffe ui` and `ffe settings set`; $FFE_* variables and flags override it.\n")
    return head + (yaml.safe_dump(nested, sort_keys=False) if nested else "")


def _annotation(key: str) -> Any:
    section, name = key.split(".")
    return Settings.model_fields[section].annotation.model_fields[name].annotation


def set_value(workdir: str | os.PathLike[str], key: str, value: str | None,
              file: str | os.PathLike[str] | None = None) -> Effective:  # fmt: skip
    """`ffe settings set KEY VALUE` (None: back to the default) in the work folder's settings file
    (or `file`), validated before it is written. Text settings take VALUE as it is; numbers and
    true/false are read as YAML; a relative path is taken from where the command runs."""
    workdir = Path(workdir).expanduser().resolve()
    if key not in keys():
        raise FFEError(f"unknown setting {key!r}{_nearest(key, keys())}")
    if key in SECRETS:
        raise FFEError(f"{key} is never stored: set ${ENV[key]} in the environment")
    target = Path(file).expanduser().resolve() if file is not None else workdir / SETTINGS_FILE
    current = _read_file(target)
    if value is None:
        current.pop(key, None)
    else:
        parsed: Any = value if _annotation(key) is str else (yamlfile.loads(value) if value.strip() else "")
        if key in PATHS and parsed:
            absolute = os.path.normpath(Path(str(parsed)).expanduser().resolve())
            if key == "input.folder" and Path(absolute).exists() and not Path(absolute).is_dir():
                raise FFEError(f"setting {key}: {absolute} is a file, not a folder; nothing saved")
            if key in MUST_EXIST or key in CHECKED_FILES:  # refused here, not at the next build
                try:
                    check_file(key, absolute)
                except FFEError as err:
                    raise FFEError(f"setting {key}: {err}; nothing saved") from None
            parsed = _stored(workdir, key, absolute) if target == workdir / SETTINGS_FILE else absolute
        current[key] = parsed
    sources = {k: f"file {target}" for k in current} | {key: "the value given"}
    checked = _build({**DEFAULTS, **current}, sources)  # validates
    if key in current and not isinstance(current[key], str):  # as validated: `1e3` steps stored as 1000
        section, name = key.split(".")
        current[key] = getattr(getattr(checked, section), name)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, render_file(current))
    except OSError as err:  # a read-only work folder, a full disk
        raise FFEError(f"cannot write settings file {target}: {err.strerror}; nothing saved") from None
    return load(workdir, env={}, file=file)


def show(effective: Effective) -> list[dict[str, Any]]:
    """Every key with its effective value (secrets masked) and source, for `ffe settings show`."""
    rows = []
    for key in keys():
        value = effective.flat[key]
        if key in SECRETS and value:
            value = "****"
        elif isinstance(value, str) and "://" in value and "@" in value.split("://", 1)[1].split("/", 1)[0]:
            scheme, rest = value.split("://", 1)
            value = f"{scheme}://****@{rest.split('@', 1)[1]}"  # credentials in a URL
        rows.append({"key": key, "value": value, "source": effective.sources[key], "env": ENV.get(key),
                     "description": description(key)})  # fmt: skip
    return rows


# FFE_* variables that are not settings but are read elsewhere.
OTHER_ENV = frozenset({"FFE_WORKDIR", "FFE_SETTINGS", "FFE_UPDATE_SNAPSHOTS", "FFE_LABEL_STUDIO_BIN"})


def unknown_env(env: Mapping[str, str] | None = None) -> list[str]:
    """One line per FFE_* variable that nothing reads (a misspelt FFE_JUGDE would be ignored)."""
    env = os.environ if env is None else env
    known = set(ENV.values()) | OTHER_ENV
    lines = []
    for name in sorted(n for n in env if n.startswith("FFE_") and n not in known):
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        lines.append(f"${name} is not a setting" + (f"; did you mean ${close[0]}?" if close else ""))
    return lines


# Settings that name a file or folder that must exist when set (the input folder is checked where
# a build starts: `ffe build` may fill the default one with the sample).
MUST_EXIST = ("train.recipe", "bench.config", "bench.vlm_path", "prelabels.vlm_path", "generator.path",
              "generator.lora")  # fmt: skip


def check_paths(effective: Effective) -> None:
    """An error naming each set path that does not exist, before any work starts."""
    missing = [f"setting {k} = {effective.flat[k]!r} (from {effective.sources[k]}): no such file or folder"
               for k in MUST_EXIST if effective.flat[k] and not Path(effective.flat[k]).exists()]  # fmt: skip
    if missing:
        raise FFEError("; ".join(missing))


# Settings naming a file whose content is checked where the setting is set and before any build.
CHECKED_FILES = ("train.recipe", "bench.config")


def check_file(key: str, path: str) -> None:
    """FFEError naming the file and the problem when the file that setting `key` names at `path` is
    missing or cannot be used (a recipe with a wrong key, a bench config with a wrong value)."""
    if not Path(path).exists():
        raise FFEError(f"{path}: no such file or folder")
    if key == "train.recipe":
        from pipelines.model import load_recipe

        load_recipe(path)
    elif key == "bench.config":
        from pixelsmile.bench.tasks import BenchConfig

        try:
            values = yamlfile.read_yaml(path, "bench config") or {}
            if not isinstance(values, dict):
                raise FFEError(f"bench config {path} must be a mapping of BenchConfig fields")
            BenchConfig.from_dict(values)
        except yamlfile.YamlFileError as err:
            raise FFEError(str(err)) from None
        except (ValueError, TypeError) as err:
            raise FFEError(f"bench config {path}: {str(err).removeprefix('bench config: ')}") from None


def check_files(effective: Effective) -> None:
    """The files that settings name, read and checked before any work starts (a training recipe
    with a wrong key would otherwise fail only once the model trains, after the whole build)."""
    for key in CHECKED_FILES:
        if path := effective.flat[key]:
            try:
                check_file(key, path)
            except FFEError as err:
                raise FFEError(f"setting {key} ({effective.sources[key]}): {err}") from None
