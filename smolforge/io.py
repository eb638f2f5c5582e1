"""Atomic writes, JSONL, and `meta.json` sidecars.

Every output goes to a temporary name in the same folder and is renamed into place only
when complete, so a crash never leaves a half-written file behind (DVC itself does not
remove partial outputs of a failed stage).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from smolforge.cli import StageError, produced_by


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: Path | str, mode: str = "w") -> Iterator[Any]:
    """Open a temp file beside `path`; on success fsync and rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temp folder beside `path`; on success replace `path` with it as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old.{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path | str, obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON, atomically."""
    with atomic_file(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def write_jsonl(path: Path | str, records: Iterable[dict]) -> int:
    """Write one compact JSON object per line, atomically; returns the record count."""
    n = 0
    with atomic_file(path) as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
            n += 1
    return n


def read_jsonl(path: Path | str, stage: str, required: Iterable[str] = ()) -> list[dict]:
    """Read a JSONL file written by `stage`; any bad line is a StageError naming it."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: file not found {produced_by(stage)}")
    required = tuple(required)
    records = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise StageError(f"{where}: not valid JSON ({e.msg}) {produced_by(stage)}") from None
            if not isinstance(rec, dict):
                raise StageError(f"{where}: expected a JSON object {produced_by(stage)}")
            for field in required:
                if field not in rec:
                    raise StageError(f'{where}: missing field "{field}" {produced_by(stage)}')
            records.append(rec)
    return records


def read_meta(folder: Path | str, stage: str, versions: Iterable[int]) -> dict:
    """Read `folder/meta.json` and refuse a format_version this code does not know."""
    path = Path(folder) / "meta.json"
    if not path.is_file():
        raise StageError(f"{path}: file not found {produced_by(stage)}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise StageError(f"{path}: not valid JSON ({e.msg}) {produced_by(stage)}") from None
    versions = tuple(versions)
    if not isinstance(meta, dict) or meta.get("format_version") not in versions:
        found = meta.get("format_version") if isinstance(meta, dict) else None
        raise StageError(
            f"{path}: format_version {found!r} is not one this code reads "
            f"({', '.join(map(str, versions))}) {produced_by(stage)}"
        )
    return meta
