"""smolforge.core.io: atomic file and folder writes, JSONL reading with located errors, meta.json versions."""

from __future__ import annotations

import json
import os
import stat

import pytest

from smolforge.core.cli import StageError
from smolforge.core.io import atomic_dir, atomic_file, read_jsonl, read_meta, write_json, write_jsonl


class Boom(Exception):
    pass


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_file_writes_text_and_bytes(tmp_path):
    with atomic_file(tmp_path / "sub" / "a.txt") as f:
        f.write("caf\u00e9\n")
    assert (tmp_path / "sub" / "a.txt").read_text(encoding="utf-8") == "caf\u00e9\n"
    with atomic_file(tmp_path / "b.bin", "wb") as f:
        f.write(b"\x00\xff")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    assert sorted(os.listdir(tmp_path)) == ["b.bin", "sub"]


def test_atomic_file_leaves_nothing_when_body_raises(tmp_path):
    with pytest.raises(Boom), atomic_file(tmp_path / "out.txt") as f:
        f.write("half of it\n")
        raise Boom
    assert os.listdir(tmp_path) == []


def test_atomic_file_keeps_previous_content_when_body_raises(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old\n")
    with pytest.raises(Boom), atomic_file(path) as f:
        f.write("new\n")
        raise Boom
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_file_has_usual_permissions(tmp_path, umask_022):
    with atomic_file(tmp_path / "out.txt") as f:
        f.write("x")
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o644


def test_atomic_dir_creates_and_replaces_as_a_whole(tmp_path, umask_022):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp != out
        (tmp / "a.txt").write_text("1")
        assert not out.exists()  # nothing visible until the body finishes
    assert os.listdir(out) == ["a.txt"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    with atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("2")
        assert os.listdir(out) == ["a.txt"]
    assert os.listdir(out) == ["b.txt"]  # a.txt is gone: the old folder was replaced, not merged
    assert os.listdir(tmp_path) == ["out"]  # no temp or .old folders left


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(Boom), atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("1")
        raise Boom
    assert os.listdir(tmp_path) == []


def test_atomic_dir_keeps_old_folder_on_failure(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(Boom), atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
        raise Boom
    assert os.listdir(out) == ["old.txt"]
    assert os.listdir(tmp_path) == ["out"]


def test_write_json_and_jsonl_round_trip(tmp_path):
    write_json(tmp_path / "m.json", {"b": 1, "a": "\u00e9"})
    text = (tmp_path / "m.json").read_text(encoding="utf-8")
    assert text == '{\n  "a": "\u00e9",\n  "b": 1\n}\n'
    records = [{"id": "x", "n": 1}, {"id": "y", "text": "line\nbreak"}]
    assert write_jsonl(tmp_path / "r.jsonl", records) == 2
    assert (tmp_path / "r.jsonl").read_text(encoding="utf-8").count("\n") == 2
    assert read_jsonl(tmp_path / "r.jsonl", "format", required=("id",)) == records


def test_write_jsonl_leaves_nothing_when_records_fail(tmp_path):
    def records():
        yield {"id": 1}
        raise Boom

    with pytest.raises(Boom):
        write_jsonl(tmp_path / "r.jsonl", records())
    assert os.listdir(tmp_path) == []


def test_read_jsonl_skips_blank_lines_but_counts_them(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": 1}\n\n   \n{"oops"\n')
    with pytest.raises(StageError) as e:
        read_jsonl(path, "generate")
    assert str(e.value).startswith(f"{path}:4: not valid JSON")


@pytest.mark.parametrize(
    "line, expected",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('"text"', "expected a JSON object"),
        ('{"id": "b"}', 'missing field "text"'),
    ],
)
def test_read_jsonl_names_path_line_and_stage(tmp_path, line, expected):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "ok"}) + "\n" + line + "\n")
    with pytest.raises(StageError) as e:
        read_jsonl(path, "format", required=("id", "text"))
    msg = str(e.value)
    assert msg.startswith(f"{path}:2: {expected}")
    assert msg.endswith("(written by stage format; run: dvc repro format)")


def test_read_jsonl_missing_file_names_stage(tmp_path):
    with pytest.raises(StageError) as e:
        read_jsonl(tmp_path / "nope.jsonl", "scrape")
    assert (
        str(e.value)
        == f"{tmp_path / 'nope.jsonl'}: file not found (written by stage scrape; run: dvc repro scrape)"
    )


def test_read_meta_accepts_known_versions(tmp_path):
    write_json(tmp_path / "meta.json", {"format_version": 2, "counts": {"train": 3}})
    assert read_meta(tmp_path, "generate", [1, 2])["counts"] == {"train": 3}


@pytest.mark.parametrize("meta", [{"format_version": 3}, {"counts": {}}, [1], {"format_version": "1"}])
def test_read_meta_refuses_unknown_version(tmp_path, meta):
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StageError) as e:
        read_meta(tmp_path, "generate", [1, 2])
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'meta.json'}: format_version ")
    assert "is not one this code reads (1, 2)" in msg
    assert "written by stage generate" in msg


def test_read_meta_missing_or_bad_json(tmp_path):
    with pytest.raises(StageError, match="meta.json: file not found .written by stage pretokenize"):
        read_meta(tmp_path, "pretokenize", [1])
    (tmp_path / "meta.json").write_text("{")
    with pytest.raises(StageError, match="meta.json: not valid JSON"):
        read_meta(tmp_path, "pretokenize", [1])


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


def test_temps_of_killed_writers_are_swept_by_the_next_write(tmp_path):
    from smolforge.core.io import sweep_stale

    dead, live = dead_pid(), os.getppid()
    (tmp_path / f".out.{dead}.abcd1234.tmp").mkdir()  # atomic_dir's temp, killed mid-write
    (tmp_path / f".m.json.{dead}.k2j3h4l5.tmp").write_text("{")  # atomic_file's
    (tmp_path / f".out.old.{dead}").mkdir()  # killed between atomic_dir's two renames
    (tmp_path / f".m.json.{live}.zzzzzzzz.tmp").write_text("{")  # a writer still running
    (tmp_path / ".keep.tmp").write_text("not ours")
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("1")
    assert sorted(os.listdir(tmp_path)) == sorted([f".m.json.{live}.zzzzzzzz.tmp", ".keep.tmp", "out"])
    assert sweep_stale(tmp_path / "missing") == []


def test_temp_names_carry_the_writers_pid(tmp_path):
    seen = []
    with atomic_file(tmp_path / "a.txt") as f:
        seen += os.listdir(tmp_path)
        f.write("x")
    with atomic_dir(tmp_path / "d"):
        seen += [n for n in os.listdir(tmp_path) if n.startswith(".d.")]
    assert seen[0].startswith(f".a.txt.{os.getpid()}.") and seen[1].startswith(f".d.{os.getpid()}.")


def test_read_jsonl_checks_the_count_meta_json_gives(tmp_path):
    from smolforge.core.io import meta_count

    write_jsonl(tmp_path / "r.jsonl", [{"id": 1}, {"id": 2}])
    assert len(read_jsonl(tmp_path / "r.jsonl", "format", expected=2)) == 2
    with pytest.raises(StageError) as e:
        read_jsonl(tmp_path / "r.jsonl", "format", expected=3)
    assert str(e.value) == (
        f"{tmp_path}/r.jsonl: 2 records, but {tmp_path}/meta.json says 3 (truncated or edited?) "
        "(written by stage format; run: dvc repro format)"
    )
    meta = {"counts": {"train": 5, "records": {"qa": 2}, "flag": True}}
    assert meta_count(meta, "train") == 5 and meta_count(meta, "records", "qa") == 2
    assert (
        meta_count(meta, "val") is None and meta_count(meta, "flag") is None and meta_count({}, "x") is None
    )


def test_bytes_that_are_not_utf8_are_named_not_a_traceback(tmp_path):
    (tmp_path / "r.jsonl").write_bytes(b'{"id": 1}\n{"id": "\x93"}\n')
    with pytest.raises(StageError, match=r"r.jsonl:2: not valid UTF-8 \(invalid start byte\)"):
        read_jsonl(tmp_path / "r.jsonl", "format")
    (tmp_path / "meta.json").write_bytes(b"\x00\x93{")
    with pytest.raises(StageError, match=r"meta.json: not valid JSON \(not UTF-8: invalid start byte\)"):
        read_meta(tmp_path, "format", [1])
