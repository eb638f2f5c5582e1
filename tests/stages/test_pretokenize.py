"""Stage pretokenize: token files agree with the tokenizer; malformed input refused."""

from __future__ import annotations

import json
import shutil

from smolforge import tokenizer, tokens
from smolforge.cli import run
from stages import pretokenize


def test_token_files_decode_to_the_rendered_text(tiny_run):
    out = tiny_run["tokens"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format_version"] == 1 and meta["dtype"] == "uint16"
    assert meta["tokenizer_sha256"] == tokenizer.file_hash(out / "tokenizer")
    assert meta["task"] == {"task": "nets", "trace": "step", "strategy": "priority", "chat_style": "plain"}
    tok = tokenizer.load(out / "tokenizer")
    split = tokens.read_split(out, "val", meta)
    records = [json.loads(line) for line in (tiny_run["format"] / "val.jsonl").read_text().splitlines()]
    assert len(split) == len(records) == meta["counts"]["val"]["n_examples"]
    for i in (0, len(records) // 2, len(records) - 1):
        ids, mask = split.example(i)
        segs = records[i]["segments"]
        assert tok.decode(ids.tolist()) == "".join(t for t, _ in segs)
        trained = tok.decode([t for t, m in zip(ids.tolist(), mask.tolist()) if m])
        assert trained == "".join(t for t, m in segs if m)


def test_malformed_segments_are_refused(tiny_run, tmp_path, caplog):
    src = tmp_path / "fmt"
    shutil.copytree(tiny_run["format"], src)
    lines = (src / "train.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    rec["segments"] = [["<s>", "yes"]]
    lines[0] = json.dumps(rec)
    (src / "train.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "tok"
    rc = run(
        pretokenize.main,
        [
            "--params",
            str(tiny_run["params"]),
            "--model",
            "nets",
            "--in",
            str(src),
            "--out",
            str(out),
            "--metrics",
            str(tmp_path / "m.json"),
        ],
    )
    assert rc == 2
    assert f'{src / "train.jsonl"}:1: field "segments"' in caplog.text
    assert not out.exists() and not (tmp_path / "m.json").exists()
