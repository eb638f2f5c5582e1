"""The base cache (smolforge/core/pretrained.py, `converted`): a GGUF base read from its
cached HF conversion is the same model and the same tokenizer as one converted from the
GGUF file on the spot, and the cache is made once, atomically."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from smolforge.core import pretrained

pytestmark = pytest.mark.slow  # converts SmolLM2-135M from its GGUF (about 20 s a load)

TEXTS = [
    "Why do constraints help when you build something?",
    "  leading spaces, tabs\tand\nnewlines  ",
    "Ünïcödé, emoji 🙂 and numbers 12345.",
    "<|im_start|>user\nhi<|im_end|>",
]
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is a lamp?"}]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """(converted on the spot, read from the cache, the cache folder)."""
    root = tmp_path_factory.mktemp("bases")
    mp = pytest.MonkeyPatch()
    mp.setenv("SMOLFORGE_BASE_CACHE", str(root))
    ref = pretrained.resolve("embedded")
    direct = (pretrained.load_model(ref, cache=False), pretrained.load_tokenizer(ref, cache=False))
    cached = (pretrained.load_model(ref), pretrained.load_tokenizer(ref))
    yield direct, cached, root
    mp.undo()


def test_cached_weights_equal_the_conversion(both):
    (m1, _), (m2, _), _ = both
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    for k in s1:
        assert s1[k].dtype == s2[k].dtype == torch.float32, k
        assert torch.equal(s1[k], s2[k]), k


def test_cached_tokenizer_equals_the_conversion(both):
    (_, t1), (_, t2), _ = both
    for text in TEXTS:
        assert t1(text)["input_ids"] == t2(text)["input_ids"], text
    assert t1.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) == t2.apply_chat_template(
        CHAT, tokenize=False, add_generation_prompt=True
    )
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(t1, name) == getattr(t2, name), name
    assert len(t1) == len(t2)


def test_the_cache_holds_one_complete_folder(both):
    *_, root = both
    folders = list(Path(root).iterdir())
    assert len(folders) == 1 and not folders[0].name.startswith(".")  # no temp folder left
    assert (folders[0] / "config.json").is_file() and (folders[0] / "tokenizer.json").is_file()
    # a second resolve finds it without converting again
    assert pretrained.converted(pretrained.resolve("embedded")).path == str(folders[0])


def test_cache_off_reads_the_gguf(monkeypatch):
    monkeypatch.setenv("SMOLFORGE_BASE_CACHE", "off")
    ref = pretrained.resolve("embedded")
    assert pretrained.converted(ref) == ref
