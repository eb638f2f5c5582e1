"""smolforge.core.card: one writer and one reader of the model card, every field and the version checked."""

from __future__ import annotations

import dataclasses
import json

import pytest

from smolforge.core.card import CARD_FILE, CARD_VERSION, ModelCard, Task, parse_task, read_card, write_card
from smolforge.core.cli import StageError

TASK = Task("chat", "human_bot", "{{ messages }}", ["<endOfText>", "<human>"], "You are a writer.", {})
CARD = ModelCard(CARD_VERSION, TASK, "base", "ab" * 32, "lora", "embedded", {"lr": 0.001, "init": "lora"})


def written(tmp_path, **change) -> dict:
    write_card(tmp_path, CARD)
    data = json.loads((tmp_path / CARD_FILE).read_text())
    data.update(change)
    (tmp_path / CARD_FILE).write_text(json.dumps(data))
    return data


def test_what_is_written_is_read_back_field_for_field(tmp_path):
    write_card(tmp_path, CARD)
    assert read_card(tmp_path) == CARD
    assert json.loads((tmp_path / CARD_FILE).read_text())["task"]["stop"] == ["<endOfText>", "<human>"]


def test_an_unknown_version_is_refused_with_the_stage_to_rerun(tmp_path):
    written(tmp_path, card_version=CARD_VERSION + 1)
    with pytest.raises(StageError, match=rf"card_version {CARD_VERSION + 1} is not one .* dvc repro train"):
        read_card(tmp_path)


def test_a_card_without_a_version_is_refused(tmp_path):
    data = written(tmp_path)
    del data["card_version"]
    (tmp_path / CARD_FILE).write_text(json.dumps(data))
    with pytest.raises(StageError, match="card_version none"):
        read_card(tmp_path)


def test_every_missing_or_wrong_field_is_named_at_once(tmp_path):
    data = written(tmp_path)
    del data["task"]["stop"]
    data["task"]["system"] = 3
    data["init"] = 1
    (tmp_path / CARD_FILE).write_text(json.dumps(data))
    with pytest.raises(StageError) as e:
        read_card(tmp_path)
    msg = str(e.value)
    assert "card.task.stop: missing key" in msg and "card.task.system: expected str" in msg
    assert "card.init: expected str" in msg and "(written by stage train" in msg


def test_missing_and_damaged_files_name_the_file_and_stage(tmp_path):
    with pytest.raises(StageError, match=rf"{CARD_FILE}: file not found \(written by stage train"):
        read_card(tmp_path)
    (tmp_path / CARD_FILE).write_bytes(b"\xff{")
    with pytest.raises(StageError, match="not valid JSON"):
        read_card(tmp_path)


def test_a_task_record_names_the_file_and_the_stage_that_wrote_it():
    good = dataclasses.asdict(TASK)
    assert parse_task(good, "data/format/chat/meta.json", "format") == TASK
    with pytest.raises(
        StageError, match=r"(?s)meta.json: .*task\.task: expected one of 'nets', 'chat'.*stage format"
    ):
        parse_task(good | {"task": "poems"}, "data/format/chat/meta.json", "format")


def test_the_writer_refuses_a_card_of_another_version(tmp_path):
    with pytest.raises(ValueError, match="card_version"):
        write_card(tmp_path, dataclasses.replace(CARD, card_version=0))
    assert not (tmp_path / CARD_FILE).exists()
