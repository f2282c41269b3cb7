"""The YAML files people write (settings, `--config`, training recipes, bench configs): one reader.

PyYAML reads YAML 1.1, where `1e-3` and `1e3` are text (a 1.1 float needs a dot: `1.0e-3`); YAML
1.2, and every other tool people check their files with, reads them as numbers. A recipe's
`learning_rate: 1e-3` was refused as "not a number", and `max_megapixels: 1e3` passed our checks as
text and failed in Dagster's. The loader here reads them as numbers (YAML 1.2's float pattern), and
refuses a key given twice in one mapping: PyYAML keeps the last one silently, so the first value a
person wrote would be ignored without a word.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import yaml

# YAML 1.2 core schema floats (https://yaml.org/spec/1.2.2/#1022-tag-resolution), plus 1.1's
# underscores and the dotted forms PyYAML already reads.
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class YamlFileError(ValueError):
    """A YAML file that cannot be read: the message names the file and the reason (with line and
    column for a syntax error or a repeated key)."""


class Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats and unique keys (see the module docstring)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# Drop 1.1's float resolver and put 1.2's in its place (add_implicit_resolver copies the table).
Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def loads(text: str, name: str = "") -> Any:
    """The value of YAML `text`; raises yaml.YAMLError (naming `name` where it says where)."""
    stream = io.StringIO(text)
    stream.name = name or "<text>"
    return yaml.load(stream, Loader=Loader)  # noqa: S506 (a safe loader)


def read_yaml(path: str | Path, what: str) -> Any:
    """The value of the YAML file at `path` (None when it is empty). `what` names the file's role in
    errors ("training recipe"): YamlFileError for a file that is missing or unreadable, not UTF-8
    (with the byte's offset), or not valid YAML (line and column)."""
    try:
        return loads(Path(path).expanduser().read_text(encoding="utf-8"), str(path))
    except IsADirectoryError:
        raise YamlFileError(f"{what} {path} is a folder, not a file") from None
    except OSError as err:
        raise YamlFileError(f"{what} {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise YamlFileError(f"{what} {path} is not UTF-8 text (byte {err.start})") from None
    except yaml.YAMLError as err:
        raise YamlFileError(f"{what} {path} is not valid YAML: {_said(err)}") from None


def _said(err: yaml.YAMLError) -> str:
    """PyYAML's complaint on one line, where it is given as line and column (1-based)."""
    if not isinstance(err, yaml.MarkedYAMLError) or err.problem_mark is None:
        return " ".join(str(err).split())
    mark = err.problem_mark
    context = f"{err.context} " if err.context else ""
    return f"{context}{err.problem} (line {mark.line + 1}, column {mark.column + 1})"
