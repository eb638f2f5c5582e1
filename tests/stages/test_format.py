"""Stage format: chat records from nets, held-out prompts dropped, bad input refused."""

from __future__ import annotations

import json
import shutil

from smolforge.core import styles
from smolforge.core.cli import run
from smolforge.nets import reducer
from stages import format as format_stage


def test_records_are_messages_with_rendered_segments(tiny_run):
    out = tiny_run["format"]
    heldout = set()
    for split in ("test", "ood", "stratified12"):
        for line in (tiny_run["generate"] / f"{split}.jsonl").read_text().splitlines():
            heldout.add(reducer.parse(json.loads(line)["net"]))
    records = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert records
    for rec in records:
        user, assistant = rec["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        state = reducer.parse(user["content"])
        assert state is not None and state not in heldout
        segs = [(t, m) for t, m in rec["segments"]]
        assert segs == styles.render(rec["messages"], "plain")
        assert [t for t, m in segs if m] == [assistant["content"] + styles.EOS]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format_version"] == 2 and meta["task"]["chat_template"] == styles.template("plain")
    # the step shape drops the pass options: the layout recorded is the one used
    assert meta["task"]["layout"] == {
        "blanks": False, "frame": 0, "marks": True, "pack": False, "border": False,
        "trace": "step", "strategy": "priority", "interleave": False, "spread": 0,
    }  # fmt: skip


def test_malformed_net_names_file_and_line_and_writes_nothing(tiny_run, tmp_path, caplog):
    src = tmp_path / "gen"
    shutil.copytree(tiny_run["generate"], src)
    lines = (src / "val.jsonl").read_text().splitlines()
    lines[2] = json.dumps({"id": "val-x", "net": "A X B"})
    (src / "val.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "fmt"
    rc = run(
        format_stage.main,
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
    assert f'{src / "val.jsonl"}:3: field "net"' in caplog.text
    assert "dvc repro generate" in caplog.text
    assert not out.exists() and not (tmp_path / "m.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
