"""The typed params loader: one frozen dataclass per `params.yaml` section.

Fields have no defaults: `params.yaml` is the only place a value is written. The loader
reports every problem of a section at once (unknown key with a suggestion, missing key,
wrong type or value) before a stage does any work or writes anything, together with any
conflict between sections of the file (smolforge.core.crosscheck): a stage reads only
its own section, but refuses to run on a file whose sections disagree.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from smolforge.core import crosscheck
from smolforge.core.cli import StageError

T = TypeVar("T")

# PyYAML follows YAML 1.1, where `1e-3` and DVC's own `2e-05` (what `dvc exp run -S
# lr=2e-5` writes back) are strings. Resolve floats the YAML 1.2 way instead.
_FLOAT_RE = re.compile(
    r"^[-+]?(?:\d[\d_]*\.?[\d_]*(?:[eE][-+]?\d+)?|\.\d[\d_]*(?:[eE][-+]?\d+)?"
    r"|\.inf|\.Inf|\.INF|\.nan|\.NaN|\.NAN)$"
)


class _Loader(yaml.SafeLoader):
    pass


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:float"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def read_yaml(path: Path) -> Any:
    """Parse a YAML file with YAML 1.2 floats; a syntax error becomes a StageError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StageError(f"{path}: file not found") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise StageError(f"{path}: not valid YAML: {e}") from None


def load_params(section: str, cls: type[T], path: Path | str = "params.yaml") -> T:
    """Read `section` (dotted, e.g. "train.nets") of `path` into the dataclass `cls`; refuse
    the file if the section has problems or the file's sections conflict."""
    data = read_yaml(Path(path))
    value, errors = convert_section(data, section, cls)
    clashes = crosscheck.conflicts(data)
    if errors is None:
        raise StageError(f"{path}: missing section {section}")
    if errors or clashes:
        raise StageError(problems_message(path, {section: errors}, clashes))
    return value


def convert_section(data: Any, section: str, cls: type[T]) -> tuple[T | None, list[str] | None]:
    """(the dataclass, its problems) of `section` of a parsed params file; problems is None
    when the section is missing."""
    node: Any = data
    for part in section.split("."):
        if not isinstance(node, dict) or part not in node:
            return None, None
        node = node[part]
    errors: list[str] = []
    value = _convert(node, cls, f"{section}", errors)
    return value, errors


def problems_message(
    path: Path | str, by_section: dict[str, list[str]], clashes: list[str], hint: bool = True
) -> str:
    """One message for every problem of a params file: by section, then the conflicts
    (with `hint`, how to list every problem of the file, not only this stage's)."""
    parts = [
        f"{path}: {len(errors)} problem(s) in section {section}:\n  " + "\n  ".join(errors)
        for section, errors in by_section.items()
        if errors
    ]
    if clashes:
        more = " (python -m stages.check lists every problem of the file)" if hint else ""
        parts.append(f"{path}: {len(clashes)} conflict(s) between sections{more}:\n  " + "\n  ".join(clashes))
    return "\n".join(parts)


def parse_params(data: Any, cls: type[T], where: str) -> T:
    """Validate an already-parsed mapping (e.g. a config sidecar) into `cls`."""
    errors: list[str] = []
    value = _convert(data, cls, where, errors)
    if errors:
        raise StageError(f"{len(errors)} problem(s):\n  " + "\n  ".join(errors))
    return value


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return str(tp).replace("typing.", "")
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str, errors: list[str]) -> Any:
    if tp is Any:  # a field whose owner checks it (e.g. a track's layout inside a model card)
        return value
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(value, tp, where, errors)
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        if len(others) == 1:  # `X | None` with a value: X's own errors say what is wrong
            return _convert(value, others[0], where, errors)
        for arg in args:
            if arg is type(None):
                continue
            trial: list[str] = []
            out = _convert(value, arg, where, trial)
            if not trial:
                return out
    elif origin is list:
        if isinstance(value, list):
            (item_tp,) = typing.get_args(tp)
            return [_convert(v, item_tp, f"{where}[{i}]", errors) for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            _, val_tp = typing.get_args(tp)
            return {str(k): _convert(v, val_tp, f"{where}.{k}", errors) for k, v in value.items()}
    elif tp is float:
        # an int is accepted for a float; bool is an int in Python but never a number here
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    errors.append(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def _convert_dataclass(value: Any, cls: Any, where: str, errors: list[str]) -> Any:
    if not isinstance(value, dict):
        errors.append(f"{where}: expected a mapping of {cls.__name__} fields, got {value!r}")
        return None
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs, n_errors = {}, len(errors)
    for key in value:
        if key not in hints:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            errors.append(f"{where}.{key}: unknown key{hint}")
    for name in names:
        if name not in value:
            errors.append(f"{where}.{name}: missing key ({_type_name(hints[name])})")
            continue
        kwargs[name] = _convert(value[name], hints[name], f"{where}.{name}", errors)
    if len(kwargs) != len(names):
        return None
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None and len(errors) == n_errors:  # its own fields are sound (siblings may not be)
        errors.extend(f"{where}.{msg}" for msg in check())
    return obj
