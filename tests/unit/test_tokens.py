"""smolforge.core.tokens: flat token files written and read back, dtype choice, and refusal of damaged files."""

from __future__ import annotations

import os

import numpy as np
import pytest

from smolforge.core.cli import StageError
from smolforge.core.tokens import read_split, token_dtype, write_split

EXAMPLES = [
    ([5, 6, 7], [0, 1, 1]),
    ([1], [1]),
    ([], []),
    ([9, 8, 7, 6, 5], [0, 0, 1, 0, 1]),
]


def meta(vocab_size: int = 16) -> dict:
    return {"dtype": token_dtype(vocab_size).name, "vocab_size": vocab_size}


def written(tmp_path, examples=EXAMPLES, vocab_size: int = 16):
    m = meta(vocab_size)
    counts = write_split(tmp_path, "train", examples, token_dtype(vocab_size))
    return m, counts


def test_token_dtype():
    assert token_dtype(272) == np.uint16
    assert token_dtype(2**16) == np.uint16  # ids 0..65535
    assert token_dtype(2**16 + 1) == np.uint32


def test_round_trip(tmp_path):
    m, counts = written(tmp_path)
    assert counts == {"n_examples": 4, "n_tokens": 9, "n_loss_tokens": 5, "max_example_tokens": 5}
    split = read_split(tmp_path, "train", m)
    assert len(split) == 4
    for i, (ids, mask) in enumerate(EXAMPLES):
        toks, ms = split.example(i)
        assert toks.tolist() == ids and ms.tolist() == mask
    assert split.tokens.dtype == np.uint16
    assert (tmp_path / "train.bin").stat().st_size == 9 * 2
    assert (tmp_path / "train.idx").stat().st_size == 5 * 8
    assert (tmp_path / "train.mask").stat().st_size == 9
    assert sorted(os.listdir(tmp_path)) == ["train.bin", "train.idx", "train.mask"]


def test_round_trip_uint32(tmp_path):
    vocab = 70_000
    examples = [([69_999, 0, 65_536], [1, 0, 1])]
    m, _ = written(tmp_path, examples, vocab)
    assert m["dtype"] == "uint32"
    split = read_split(tmp_path, "train", m)
    assert split.tokens.dtype == np.uint32
    assert split.example(0)[0].tolist() == [69_999, 0, 65_536]
    assert (tmp_path / "train.bin").stat().st_size == 3 * 4


def test_empty_split(tmp_path):
    m, counts = written(tmp_path, [])
    assert counts == {"n_examples": 0, "n_tokens": 0, "n_loss_tokens": 0, "max_example_tokens": 0}
    assert len(read_split(tmp_path, "train", m)) == 0


def chop(path, n_bytes: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-n_bytes])


@pytest.mark.parametrize(
    "suffix, n_bytes, expected",
    [
        ("bin", 1, r"train\.bin: size is not a whole number of uint16 tokens"),
        ("bin", 2, r"train\.\*: token, offset and mask files disagree"),
        ("idx", 8, r"train\.\*: token, offset and mask files disagree"),
        ("idx", 3, r"train\.idx: size is not a whole number of int64 offsets"),
        ("mask", 1, r"train\.\*: token, offset and mask files disagree"),
    ],
)
def test_truncated_files_are_refused(tmp_path, suffix, n_bytes, expected):
    m, _ = written(tmp_path)
    chop(tmp_path / f"train.{suffix}", n_bytes)
    with pytest.raises(StageError, match=expected) as e:
        read_split(tmp_path, "train", m)
    assert str(e.value).startswith(str(tmp_path))
    assert str(e.value).endswith("(written by stage pretokenize; run: dvc repro pretokenize)")


def test_mask_length_mismatch_is_refused(tmp_path):
    m, _ = written(tmp_path)
    (tmp_path / "train.mask").write_bytes(bytes(10))  # one more than the 9 tokens
    with pytest.raises(StageError, match="pretokenize"):
        read_split(tmp_path, "train", m)


def test_unordered_offsets_are_refused(tmp_path):
    m, _ = written(tmp_path)
    np.array([0, 5, 3, 4, 9], dtype=np.int64).tofile(tmp_path / "train.idx")
    with pytest.raises(StageError, match="disagree"):
        read_split(tmp_path, "train", m)


def test_missing_file_is_refused(tmp_path):
    m, _ = written(tmp_path)
    (tmp_path / "train.mask").unlink()
    with pytest.raises(StageError, match=r"train\.mask: file not found \(written by stage pretokenize"):
        read_split(tmp_path, "train", m)


def test_token_beyond_vocab_is_refused(tmp_path):
    m, _ = written(tmp_path)
    with pytest.raises(StageError, match="token id beyond vocab_size 9") as e:
        read_split(tmp_path, "train", {**m, "vocab_size": 9})  # the data holds id 9
    assert "pretokenize" in str(e.value)
    assert len(read_split(tmp_path, "train", {**m, "vocab_size": 10})) == 4


def test_dtype_mismatch_is_refused(tmp_path):
    # uint16 data read as uint32: 18 bytes are 4.5 tokens
    m, _ = written(tmp_path)
    with pytest.raises(StageError, match=r"train\.bin: size is not a whole number of uint32 tokens"):
        read_split(tmp_path, "train", {**m, "dtype": "uint32"})
