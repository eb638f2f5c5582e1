"""Atomic writes, JSONL, and `meta.json` sidecars.

Every output goes to a temporary name in the same folder and is renamed into place only
when complete, so a crash never leaves a half-written file behind (DVC itself does not
remove partial outputs of a failed stage). A process killed mid-write (SIGKILL, power
loss) runs no cleanup, so temp names carry the writer's pid, and the next write into the
same folder removes the temps of writers that are no longer alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from smolforge.core.cli import StageError, produced_by

# `.NAME.PID.XXXXXXXX.tmp` (tempfile's 8 random characters) and atomic_dir's `.NAME.old.PID`
_TEMP_RE = re.compile(r"^\..+\.(?:(\d+)\.[a-z0-9_]{8}\.tmp|old\.(\d+))$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_stale(folder: Path | str) -> list[Path]:
    """Remove the temp files and folders that killed writers left in `folder`; returns them.

    DVC never looks beside a stage's outputs, so without this a stage killed while
    writing `data/x` would leave `data/.x.PID.abcd1234.tmp` there for good.
    """
    folder, removed = Path(folder), []
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return removed
    for name in names:
        m = _TEMP_RE.match(name)
        if m is None:
            continue
        pid = int(m.group(1) or m.group(2))
        if pid == os.getpid() or _alive(pid):
            continue
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        removed.append(path)
    return removed


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: Path | str, mode: str = "w") -> Iterator[Any]:
    """Open a temp file beside `path`; on success fsync and rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
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
    sweep_stale(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
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


def read_jsonl(
    path: Path | str,
    stage: str,
    required: Iterable[str] = (),
    expected: int | None = None,
    origin: str | None = None,
) -> list[dict]:
    """Read a JSONL file written by `stage`; any bad line is a StageError naming it.

    `expected` is the record count the folder's meta.json gives (None: not checked): a file
    cut at a line boundary is well-formed JSONL, and only the count tells it is short.
    `origin` replaces the "written by stage ..." hint for a file a user wrote.
    """
    path = Path(path)
    hint = origin or produced_by(stage)
    if not path.is_file():
        raise StageError(f"{path}: file not found {hint}")
    required = tuple(required)
    records = []
    with path.open("rb") as f:  # bytes, so that a damaged line is named, not a traceback
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise StageError(f"{where}: not valid UTF-8 ({e.reason}) {hint}") from None
            except json.JSONDecodeError as e:
                raise StageError(f"{where}: not valid JSON ({e.msg}) {hint}") from None
            if not isinstance(rec, dict):
                raise StageError(f"{where}: expected a JSON object {hint}")
            for field in required:
                if field not in rec:
                    raise StageError(f'{where}: missing field "{field}" {hint}')
            records.append(rec)
    if expected is not None and len(records) != expected:
        raise StageError(
            f"{path}: {len(records)} records, but {path.parent / 'meta.json'} says {expected} "
            f"(truncated or edited?) {hint}"
        )
    return records


def read_meta(folder: Path | str, stage: str, versions: Iterable[int]) -> dict:
    """Read `folder/meta.json` and refuse a format_version this code does not know."""
    path = Path(folder) / "meta.json"
    if not path.is_file():
        raise StageError(f"{path}: file not found {produced_by(stage)}")
    try:
        meta = json.loads(path.read_bytes())
    except json.JSONDecodeError as e:
        raise StageError(f"{path}: not valid JSON ({e.msg}) {produced_by(stage)}") from None
    except UnicodeDecodeError as e:
        raise StageError(f"{path}: not valid JSON (not UTF-8: {e.reason}) {produced_by(stage)}") from None
    versions = tuple(versions)
    if not isinstance(meta, dict) or meta.get("format_version") not in versions:
        found = meta.get("format_version") if isinstance(meta, dict) else None
        raise StageError(
            f"{path}: format_version {found!r} is not one this code reads "
            f"({', '.join(map(str, versions))}) {produced_by(stage)}"
        )
    return meta


def meta_count(meta: dict, *keys: str) -> int | None:
    """meta["counts"][key][...], or None where a meta.json (an older one) does not record it."""
    node: Any = meta.get("counts")
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, int) and not isinstance(node, bool) else None
