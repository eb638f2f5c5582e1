"""smolforge.core.live: dvclive folders written whole, resumed at the next step, offline."""

from __future__ import annotations

import json

from smolforge.core import live


def test_write_gives_dvclives_layout_and_resume_continues_the_series(tmp_path):
    folder = tmp_path / "live"
    live.write(folder, {"loss": [(3, 2.5), (6, 2.0)], "val": [(6, 2.2)]}, {"loss": 2.0, "val": 2.2})
    assert json.loads((folder / "metrics.json").read_text()) == {"loss": 2.0, "val": 2.2, "step": 6}
    assert (folder / "plots/metrics/loss.tsv").read_text().splitlines() == ["step\tloss", "3\t2.5", "6\t2.0"]
    lv = live.open_live(folder, resume=True)
    live.log_step(lv, 9, {"loss": 1.5})
    assert (folder / "plots/metrics/loss.tsv").read_text().splitlines()[-2:] == ["6\t2.0", "9\t1.5"]
    assert json.loads((folder / "metrics.json").read_text())["step"] == 9
    # dvclive wrote nothing beside the two parts dvc.yaml declares (no dvc.yaml, report, params)
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.json", "plots"]


def test_write_replaces_the_whole_folder_and_is_the_same_for_the_same_rows(tmp_path):
    folder = tmp_path / "live"
    live.write(folder, {"loss": [(1, 3.0), (2, 2.0), (3, 1.0)]}, {})
    live.write(folder, {"loss": [(1, 3.0)]}, {"loss": 3.0}, {"table": ([{"x": 1, "y": 0.5}], "x", ["y"])})
    first = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert first["plots/metrics/loss.tsv"] == b"step\tloss\n1\t3.0\n"  # steps 2, 3 are gone
    assert json.loads(first["plots/custom/table.json"]) == [{"x": 1, "y": 0.5}]
    live.write(folder, {"loss": [(1, 3.0)]}, {"loss": 3.0}, {"table": ([{"x": 1, "y": 0.5}], "x", ["y"])})
    assert {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    } == first
    assert [p.name for p in tmp_path.iterdir()] == ["live"]  # no temp folder left beside it


def test_studio_stays_off_unless_the_user_asks(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_STUDIO_OFFLINE", raising=False)
    monkeypatch.setenv("DVC_STUDIO_TOKEN", "not-a-real-token")  # would post to Studio if online
    lv = live.open_live(tmp_path / "live", resume=False)
    assert {"start", "data", "done"} <= lv._studio_events_to_skip  # dvclive posts nothing
