"""Stage convert on the real SmolLM2-135M-Instruct (the chat model's base) saved as train saves
a merged finetune: f16 and q8_0 GGUF files that llama.cpp runs, parity gates, perplexity, Modelfile."""

from __future__ import annotations

import json
import time

import gguf
import pytest
import yaml

from smolforge.core import tokens
from smolforge.core.card import ModelCard, Task, write_card
from smolforge.gguf import modelfile
from stages import convert

pytestmark = pytest.mark.slow

CHATS = [
    (
        "What is the capital of France?",
        "The capital of France is Paris. It sits on the river Seine in the north of the country, and it "
        "is also the largest city in France, home to about two million people.",
    ),
    (
        "Why do essays need constraints?",
        "Constraints force you to decide what matters. With a limit on time or length you cut the parts "
        "that do not help your point, and what is left is usually clearer and more honest.",
    ),
    (
        "How do plants make their food?",
        "Plants make food by photosynthesis. Their leaves take in sunlight, water and carbon dioxide, and "
        "turn them into sugar and oxygen. The sugar feeds the plant and the oxygen goes into the air.",
    ),
    (
        "How many legs does a spider have?",
        "A spider has eight legs. That is one way to tell spiders from insects, which have six legs and "
        "a body in three parts.",
    ),
    (
        "Can you give me a tip for learning to write?",
        "Write every day, even if only for a few minutes. Then read what you wrote out loud: the "
        "sentences that sound awkward are usually the ones that need to be rewritten.",
    ),
    (
        "Say hello in Spanish.",
        "Hola! That is how you say hello in Spanish. You can also say buenos días in the morning.",
    ),
]
GATE = {  # the defaults of params.yaml convert.chat
    "min_top1": {"f32": 0.99, "f16": 0.98, "q8_0": 0.9},
    "max_logit_diff": {"f32": 0.01, "f16": 0.5, "q8_0": 5.0},
    "min_tokenizer_match": 1.0,
    "max_ppl_ratio": 1.01,
}


def chat_example(tok, question: str, answer: str) -> tuple[list[int], list[int]]:
    """Ids of one chat through the template, mask 1 on the answer and its <|im_end|>."""
    msgs = [{"role": "user", "content": question}]
    prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template([*msgs, {"role": "assistant", "content": answer}], tokenize=False)
    head = tok(prompt, add_special_tokens=False).input_ids
    ids = tok(full, add_special_tokens=False).input_ids
    assert ids[: len(head)] == head
    return ids, [0] * len(head) + [1] * (len(ids) - len(head))


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict:
    """train's chat output (SmolLM2 as a plain HF dir), pretokenize's val split, and the
    convert stage run on them once."""
    from smolforge.core.pretrained import load_model, load_tokenizer

    root = tmp_path_factory.mktemp("convert_chat")
    hf, tok_dir = root / "models/chat/hf", root / "data/pretokenize/chat"
    tok = load_tokenizer("embedded")
    load_model("embedded").save_pretrained(hf)
    tok.save_pretrained(hf)
    task = Task("chat", "template", tok.chat_template, stop=["<|im_end|>"], system="", layout={})
    write_card(hf, ModelCard(1, task, "base", "0" * 64, "full", "embedded", {}))  # convert reads the task

    dtype = tokens.token_dtype(len(tok))
    counts = tokens.write_split(tok_dir, "val", [chat_example(tok, q, a) for q, a in CHATS], dtype)
    meta = {
        "format_version": tokens.FORMAT_VERSION,
        "produced_by": "pretokenize",
        "vocab_size": len(tok),
        "dtype": dtype.name,
        "bos_id": tok.bos_token_id,
        "eos_id": tok.eos_token_id,
        "pad_id": tok.pad_token_id,
        "counts": {"val": counts},
        "task": task.to_dict(),
    }
    (tok_dir / "meta.json").write_text(json.dumps(meta))

    section = {
        "file_types": ["f16", "q8_0"],
        "parity_examples": len(CHATS),
        "threads": 2,
        "gate": GATE,
        "modelfile": {"file_type": "q8_0", "temperature": 0.7, "num_ctx": 2048},
    }
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"convert": {"chat": section}}))
    out, metrics = root / "models/chat/gguf", root / "metrics/convert/chat.json"
    t0 = time.perf_counter()
    convert.main(
        ["--params", str(params), "--model", "chat", "--hf", str(hf), "--tokens", str(tok_dir)]
        + ["--out", str(out), "--metrics", str(metrics)]
    )
    return {
        "out": out,
        "metrics": json.loads((out / "parity.json").read_text()),  # every figure; metrics: the headline
        "tokenizer": tok,
        "stage_s": time.perf_counter() - t0,
    }


def test_parity_and_perplexity_within_the_gates(converted):
    m = converted["metrics"]
    print(f"convert stage: {converted['stage_s']:.1f} s; metrics: {json.dumps(m, indent=1)}")
    # (the stage itself fails on a missed gate: top-1, logit difference, tokenizer match, ppl ratio)
    for ft in ("f16", "q8_0"):
        assert m[ft]["quantized_tensors"] == (211 if ft == "q8_0" else 0)  # 1 + 30 layers x 7
    # f16 reproduces HF's perplexity; q8_0 stays within 1% of f16 (the issue's demand)
    assert m["f16"]["perplexity"] == pytest.approx(m["f16"]["hf_perplexity"], rel=2e-3)
    assert m["q8_0_vs_f16_ppl_ratio"] == pytest.approx(m["q8_0"]["perplexity"] / m["f16"]["perplexity"])


def test_gguf_metadata_is_smollm2(converted):
    tok = converted["tokenizer"]
    reader = gguf.GGUFReader(converted["out"] / "model-q8_0.gguf")

    def value(key):
        return reader.get_field(key).contents()

    for key, want in {
        "llama.block_count": 30,
        "llama.embedding_length": 576,
        "llama.attention.head_count": 9,
        "llama.attention.head_count_kv": 3,
        "llama.rope.dimension_count": 64,
        "llama.context_length": 8192,
        "llama.vocab_size": 49152,
    }.items():
        assert value(key) == want, key
    assert value("llama.rope.freq_base") == pytest.approx(100000.0)
    assert value("llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert "output.weight" not in {t.name for t in reader.tensors}  # tied to token_embd
    assert value("tokenizer.ggml.model") == "gpt2"
    assert value("tokenizer.ggml.pre") in ("gpt-2", "smollm")
    assert value("tokenizer.chat_template") == tok.chat_template
    # from the model card: the stop words; no persona key for an empty one
    assert value("smolforge.stop") == '["<|im_end|>"]' and reader.get_field("smolforge.system") is None
    tokens_ = value("tokenizer.ggml.tokens")
    assert tokens_[value("tokenizer.ggml.eos_token_id")] == "<|im_end|>"
    assert tokens_[value("tokenizer.ggml.bos_token_id")] == "<|im_start|>"
    assert value("tokenizer.ggml.padding_token_id") == tok.pad_token_id
    assert value("tokenizer.ggml.unknown_token_id") == tok.unk_token_id


def test_llama_cpp_chats_with_the_template_and_stops_at_im_end(converted):
    """The GGUF's own chat template and EOS: f16 answers as HF does and stops at <|im_end|>.
    (q8_0 is not used here: on this prompt HF's top two first tokens are 0.09 apart, "The"
    over "L", and q8_0's rounding swaps them, as the shipped Q4_1 file's does.)"""
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(converted["out"] / "model-f16.gguf"), n_ctx=256, n_threads=2, verbose=False, seed=0
    )
    try:
        msgs = [{"role": "user", "content": "What is the capital of France?"}]
        reply = llm.create_chat_completion(messages=msgs, max_tokens=48, temperature=0.0)
    finally:
        llm.close()
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "stop"  # ended at <|im_end|>, not at max_tokens
    assert choice["message"]["content"] == "The capital of France is Paris."


def test_modelfile_points_at_q8_0_with_chatml(converted):
    out, tok = converted["out"], converted["tokenizer"]
    text = (out / "Modelfile").read_text()
    lines = text.splitlines()
    assert lines[1] == "FROM ./model-q8_0.gguf" and (out / "model-q8_0.gguf").is_file()
    assert 'TEMPLATE """{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}' in text
    assert 'SYSTEM "You are a helpful AI assistant named SmolLM, trained by Hugging Face"' in lines
    assert lines[-3:] == [
        'PARAMETER stop "<|im_end|>"',
        "PARAMETER temperature 0.7",
        "PARAMETER num_ctx 2048",
    ]
    fmt = modelfile.describe(tok.chat_template, tok.bos_token, tok.eos_token)
    msgs = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    assert modelfile.render(fmt, msgs) == tok.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=True
    )
