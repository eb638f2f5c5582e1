"""smolforge.gguf.export and .parity: GGUF metadata (the model card's included), tensor types, rotary
permutation and llama.cpp parity."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import gguf
import numpy as np
import pytest

from smolforge.core import styles, tokenizer
from smolforge.core.card import CARD_FILE, ModelCard, Task, write_card
from smolforge.core.cli import StageError
from smolforge.core.model import LlamaShape, build, llama_config, to_hf
from smolforge.gguf import export, parity

Q = gguf.GGMLQuantizationType
SHAPE = LlamaShape(
    dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=128, rope_theta=10000.0
)
TEXTS = [
    "A D B\nD A B =",
    "<s>C B A D\n B C D A</s>",
    "EMPTY\n",
    "Hello, world! It's 2024: numbers 12345 and  two  spaces.\n\n",
    "tabs\tand trailing spaces   ",
    "caf\u00e9 \u00fcber na\u00efve \u65e5\u672c\u8a9e \U0001f600",
    "we'll they're I'd",
]


def net_texts(n: int, seed: int = 0) -> list[str]:
    """Strings shaped like the nets task: 'A D B\\nD A B =' lines."""
    rng = random.Random(seed)
    nets = ["".join(rng.choice("ABCD") for _ in range(rng.randint(0, 8))) for _ in range(n)]
    return [f"{' '.join(a) or 'EMPTY'}\n{' '.join(reversed(a)) or 'EMPTY'} =" for a in nets]


NETS_TASK = Task("nets", "plain", styles.template("plain"), stop=[], system="", layout={"trace": "full"})


def card(task: Task) -> ModelCard:
    return ModelCard(1, task, "byte_bpe", "0" * 64, init="scratch", base=None, train_params={})


def make_hf_dir(
    path: Path, shape: LlamaShape = SHAPE, tie: bool = True, seed: int = 0, task: Task = NETS_TASK
) -> Path:
    """A random tiny Llama plus a byte-level BPE and a model card, saved as train would save them."""
    tok = tokenizer.to_hf(tokenizer.train_byte_bpe(net_texts(300), 300), styles.template("plain"))
    config = llama_config(shape, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    config.tie_word_embeddings = tie
    config.initializer_range = 0.2  # larger weights: well-separated logits, so top-1 is no coin toss
    to_hf(build(config, seed)).save_pretrained(path)
    tok.save_pretrained(path)
    write_card(path, card(task))
    return path


def sequences(tok, n: int = 4) -> list[list[int]]:
    """Token ids as the token files hold them: BOS, prompt, answer, EOS."""
    return [tok(f"<s>{t}</s>", add_special_tokens=False).input_ids for t in net_texts(n, seed=1)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One GQA model exported to every file type, with its parity figures."""
    root = tmp_path_factory.mktemp("gguf")
    src = export.load_source(make_hf_dir(root / "hf"), name="tiny")
    seqs = sequences(src.tokenizer)
    out = {}
    for ft in export.FILE_TYPES:
        report = export.write_gguf(src, root / f"model-{ft}.gguf", ft)
        out[ft] = (report, parity.check_parity(report.path, src, seqs, TEXTS, n_threads=2))
    return src, out


def test_metadata(exported):
    src, out = exported
    reader = gguf.GGUFReader(out["f16"][0].path)

    def value(key):
        return reader.get_field(key).contents()

    assert value("general.architecture") == "llama"
    assert value("general.name") == "tiny"
    assert value("general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    expected = {
        "context_length": 128,
        "embedding_length": 64,
        "block_count": 2,
        "feed_forward_length": 128,
        "attention.head_count": 4,
        "attention.head_count_kv": 2,
        "rope.dimension_count": 16,
        "vocab_size": len(src.tokenizer),
    }
    for key, want in expected.items():
        assert value(f"llama.{key}") == want, key
    assert value("llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert value("llama.rope.freq_base") == pytest.approx(10000.0)
    # a nets model's card has no stop words or persona: its file carries no chat keys
    assert reader.get_field("smolforge.stop") is None and reader.get_field("smolforge.system") is None


def test_a_chat_card_puts_stop_words_and_persona_in_the_file(tmp_path):
    task = Task("chat", "human_bot", "", stop=["<endOfText>", "<human>"], system="You are Paul.", layout={})
    src = export.load_source(make_hf_dir(tmp_path / "hf", task=task))
    assert src.card.task == task
    reader = gguf.GGUFReader(export.write_gguf(src, tmp_path / "m.gguf", "f32").path)
    assert reader.get_field("smolforge.stop").contents() == '["<endOfText>", "<human>"]'
    assert reader.get_field("smolforge.system").contents() == "You are Paul."
    # the stop words alone when the persona is empty (chat.talk reads a missing key as '')
    src = dataclasses.replace(src, card=card(dataclasses.replace(task, stop=[], system="")))
    reader = gguf.GGUFReader(export.write_gguf(src, tmp_path / "m.gguf", "f32").path)
    assert reader.get_field("smolforge.stop").contents() == "[]"
    assert reader.get_field("smolforge.system") is None


def test_load_source_reads_the_card_before_the_weights(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()  # no weights either: the card is what is reported
    with pytest.raises(StageError) as e:
        export.load_source(hf)
    assert str(e.value) == f"{hf / CARD_FILE}: file not found (written by stage train; run: dvc repro train)"


def test_tokenizer_metadata(exported):
    src, out = exported
    reader = gguf.GGUFReader(out["f32"][0].path)

    def value(key):
        return reader.get_field(key).contents()

    tok = src.tokenizer
    assert value("tokenizer.ggml.model") == "gpt2"
    assert value("tokenizer.ggml.pre") == "gpt-2"
    assert value("tokenizer.ggml.tokens") == tokenizer.byte_bpe_parts(tok)["tokens"]
    assert len(value("tokenizer.ggml.merges")) == len(tokenizer.byte_bpe_parts(tok)["merges"])
    types = value("tokenizer.ggml.token_type")
    assert types[tok.bos_token_id] == gguf.TokenType.CONTROL
    assert types[tok.convert_tokens_to_ids("A")] == gguf.TokenType.NORMAL
    assert value("tokenizer.ggml.bos_token_id") == tok.bos_token_id
    assert value("tokenizer.ggml.eos_token_id") == tok.eos_token_id
    assert value("tokenizer.ggml.padding_token_id") == tok.pad_token_id
    assert value("tokenizer.ggml.add_bos_token") is False
    assert value("tokenizer.ggml.add_eos_token") is False
    assert value("tokenizer.chat_template") == styles.template("plain")


def test_tensor_types(exported):
    _, out = exported
    for ft, want_2d in (("f32", Q.F32), ("f16", Q.F16), ("q8_0", Q.Q8_0)):
        tensors = {t.name: t.tensor_type for t in gguf.GGUFReader(out[ft][0].path).tensors}
        assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
        assert len(tensors) == 1 + 1 + 2 * 9
        assert tensors["blk.0.attn_norm.weight"] == tensors["output_norm.weight"] == Q.F32
        assert tensors["token_embd.weight"] == tensors["blk.1.ffn_down.weight"] == want_2d
    report = out["q8_0"][0]
    assert len(report.quantized) == 1 + 2 * 7 and report.kept == []
    assert out["f16"][0].quantized == [] and out["f16"][0].n_bytes == out["f16"][0].path.stat().st_size


def test_parity(exported):
    _, out = exported
    f32, f16, q8 = (out[ft][1] for ft in ("f32", "f16", "q8_0"))
    assert f32.max_abs_logit_diff < 1e-3 and f32.top1_agreement == 1.0
    assert f16.max_abs_logit_diff < 0.05 and f16.top1_agreement >= 0.95
    # q8_0 rounding alone moves these logits (std ~1.6) by ~0.35 when HF runs the
    # dequantized weights, and a random model has near-ties, so only most argmaxes agree
    assert q8.max_abs_logit_diff < 1.0 and q8.top1_agreement >= 0.85
    assert f32.n_positions > 20
    for _, par in out.values():
        assert par.tokenizer_match == 1.0


def test_q8_0_keeps_rows_not_divisible_by_32():
    arr = np.zeros((8, 48), np.float32)
    assert export.tensor_type(arr, "q8_0") == Q.F16
    assert export.tensor_type(np.zeros((8, 64), np.float32), "q8_0") == Q.Q8_0
    assert export.tensor_type(np.zeros(64, np.float32), "q8_0") == Q.F32


def test_interleave_rotary_pairs_halves():
    # one head of dim 4: HF rows [x0, x1, y0, y1] -> llama.cpp rows [x0, y0, x1, y1]
    w = np.arange(4, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    assert export.interleave_rotary(w, 1)[:, 0].tolist() == [0, 2, 1, 3]
    two = np.arange(8, dtype=np.float32)[:, None]
    assert export.interleave_rotary(two, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_gqa_parity_needs_the_permutation(tmp_path, monkeypatch):
    """n_kv_heads=1 < n_heads=4, untied head: exact parity, and a wrong k permutation breaks it."""
    shape = LlamaShape(
        dim=64, n_layers=1, n_heads=4, n_kv_heads=1, ffn_dim=80, max_seq_len=64, rope_theta=500.0
    )
    src = export.load_source(make_hf_dir(tmp_path / "hf", shape, tie=False, seed=3))
    seqs = sequences(src.tokenizer, 3)
    good = export.write_gguf(src, tmp_path / "good.gguf", "f32")
    assert "output.weight" in {t.name for t in gguf.GGUFReader(good.path).tensors}
    assert "blk.0.ffn_down.weight" in export.write_gguf(src, tmp_path / "q8.gguf", "q8_0").kept
    par = parity.check_parity(good.path, src, seqs, [], n_threads=2)
    assert par.max_abs_logit_diff < 1e-3 and par.top1_agreement == 1.0

    real = export.interleave_rotary
    # permuting k as if it had n_heads heads (the classic GQA mistake) must show up
    monkeypatch.setattr(export, "interleave_rotary", lambda w, n: real(w, 4))
    bad = export.write_gguf(src, tmp_path / "bad.gguf", "f32")
    assert parity.check_parity(bad.path, src, seqs, [], n_threads=2).max_abs_logit_diff > 1e-2


def test_smollm2_head_layout_parity(tmp_path):
    """SmolLM2's layout scaled down: 9 heads sharing 3 KV heads (groups of 3), tied
    embeddings, rope_theta 1e5: exact f32 parity."""
    shape = LlamaShape(
        dim=72, n_layers=2, n_heads=9, n_kv_heads=3, ffn_dim=96, max_seq_len=64, rope_theta=100000.0
    )
    src = export.load_source(make_hf_dir(tmp_path / "hf", shape, seed=5))
    report = export.write_gguf(src, tmp_path / "m.gguf", "f32")
    reader = gguf.GGUFReader(report.path)
    assert reader.get_field("llama.attention.head_count_kv").contents() == 3
    assert reader.get_field("llama.rope.freq_base").contents() == pytest.approx(1e5)
    par = parity.check_parity(report.path, src, sequences(src.tokenizer, 3), [], n_threads=2)
    assert par.max_abs_logit_diff < 1e-3 and par.top1_agreement == 1.0


def test_target_positions_follow_the_loss_mask():
    assert parity.target_positions([0, 0, 1, 1]).tolist() == [2, 3]
    assert parity.target_positions([1, 0, 1]).tolist() == [2]  # position 0 has no context
    assert parity.target_positions([0, 0, 0]).tolist() == [1, 2]  # nothing trained: all
    assert parity.target_positions([1]).tolist() == []


def test_token_nll_is_cross_entropy_of_the_previous_position():
    import torch

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 5, (6, 11)).astype(np.float32)
    ids = rng.integers(0, 11, 6).tolist()
    targets = np.array([2, 3, 5])
    want = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits[targets - 1]), torch.tensor(ids)[targets], reduction="none"
    )
    np.testing.assert_allclose(parity.token_nll(logits, ids, targets), want.numpy(), rtol=1e-5)
    assert parity.perplexity([]) == (None, 0)


def test_perplexity_is_the_training_loss_on_masked_targets(exported):
    """hf_perplexity = exp(HF's own shifted loss with labels only where mask is 1), and
    llama.cpp's f32 perplexity equals it; one HF pass serves every file."""
    import torch

    src, out = exported
    seqs = sequences(src.tokenizer)
    masks = [[0] * (len(s) // 2) + [1] * (len(s) - len(s) // 2) for s in seqs]
    total, n = 0.0, 0
    for ids, mask in zip(seqs, masks):
        labels = torch.tensor([[t if m else -100 for t, m in zip(ids, mask)]])
        with torch.inference_mode():
            loss = src.model(torch.tensor([ids]), labels=labels).loss.item()
        count = sum(mask[1:])
        total, n = total + loss * count, n + count
    paths = {ft: out[ft][0].path for ft in ("f32", "q8_0")}
    both = parity.check_parities(paths, src, seqs, [], n_threads=2, masks=masks)
    assert both["f32"].n_loss_tokens == n
    assert both["f32"].hf_perplexity == pytest.approx(np.exp(total / n), rel=1e-5)
    assert both["f32"].perplexity == pytest.approx(both["f32"].hf_perplexity, rel=1e-4)
    assert both["q8_0"].hf_perplexity == both["f32"].hf_perplexity
    alone = parity.check_parity(paths["q8_0"], src, seqs, [], n_threads=2, masks=masks)
    assert dataclasses.astuple(alone) == dataclasses.astuple(both["q8_0"])


def test_tokenizer_check_catches_a_wrong_pre(tmp_path, exported):
    """llama.cpp's "default" pre-tokenizer splits " =" in two; "gpt-2" keeps it, as HF does."""
    from llama_cpp import Llama

    src, _ = exported
    wrong = export.write_gguf(dataclasses.replace(src, pre="default"), tmp_path / "m.gguf", "f32")
    llm = Llama(model_path=str(wrong.path), vocab_only=True, verbose=False)
    try:
        assert parity.tokenizer_agreement(llm, src.tokenizer, TEXTS) < 1.0
    finally:
        llm.close()


def test_write_is_atomic(tmp_path, exported, monkeypatch):
    src, _ = exported

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(RuntimeError):
        export.write_gguf(src, tmp_path / "m.gguf", "f16")
    assert list(tmp_path.iterdir()) == []


def test_refuses_unknown_pre_tokenizer_and_config():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(export.ExportError, match="pre-tokenizer"):
        export.pre_tokenizer_name(PreTrainedTokenizerFast(tokenizer_object=raw))
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    assert export.pre_tokenizer_name(PreTrainedTokenizerFast(tokenizer_object=raw)) == "smollm"
    with pytest.raises(export.ExportError, match="attention_bias"):
        export.check_config(LlamaConfig(attention_bias=True))
