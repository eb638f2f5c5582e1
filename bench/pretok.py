"""Pretokenize's encoding vs the raw tokenizer's own batch encode of the same text.

The nets data is built in a temporary folder by the real generate and format stages
(params.yaml, fewer training nets), and the byte-level BPE tokenizer is trained as the
stage trains it. Then, side by side on the training split:

  pretokenize: what the stage does after the tokenizer exists: encode every segment,
               stitch examples and loss masks, the double-BOS and segment-boundary
               checks, and the token, offset and mask files written;
  raw:         `tokenizer(texts)` on each example's whole text: the HF tokenizer's
               batch encode, as a script that skips the pipeline would call it;
  rust:        the Rust tokenizer's own `encode_batch_fast` on the same texts (no HF
               wrapper), reported as a second, harder baseline.

The stage encodes every example twice (segment by segment, for the loss masks, and
whole, for the boundary check), each distinct text once, with `encode_batch_fast`, and
pauses Python's GC while it builds the id lists. The
figure is tokens per second; reading JSONL and training the tokenizer are outside all
sides.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import yaml

from bench.common import Row, interleave, median, meets, paired_ratio, timed
from smolforge.core import encode, styles, tokenizer, tokens
from smolforge.core.io import read_meta
from smolforge.core.params import read_yaml
from stages import format as format_stage
from stages import generate

ROOT = Path(__file__).resolve().parent.parent


def build_segments(tmp: Path, n_train: int) -> tuple[list, dict]:
    params = read_yaml(ROOT / "params.yaml")
    params["generate"]["n_train"] = n_train
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    common = ["--params", str(tmp / "params.yaml")]
    generate.main([*common, "--out", str(tmp / "gen"), "--metrics", str(tmp / "m1.json")])
    format_stage.main(
        [
            *common,
            "--model",
            "nets",
            "--in",
            str(tmp / "gen"),
            "--out",
            str(tmp / "fmt"),
            "--metrics",
            str(tmp / "m2.json"),
        ]
    )
    return encode.read_segments(tmp / "fmt/train.jsonl", None), read_meta(
        tmp / "fmt", "format", versions=(2,)
    )


def run(quick: bool) -> list[Row]:
    logging.getLogger("stages").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        examples, fmeta = build_segments(tmp, 4_000 if quick else 20_000)
        p = read_yaml(ROOT / "params.yaml")["pretokenize"]["nets"]
        texts = ["".join(t for t, _ in ex) for ex in examples]
        specials = tokenizer.Specials(styles.BOS, styles.EOS, styles.PAD)
        built = tokenizer.build(
            p["tokenizer"], texts, fmeta.get("chat_template"), specials, vocab_size=p["vocab_size"]
        )
        hf = built.hf
        dtype = tokens.token_dtype(tokenizer.n_vocab(hf))
        log = logging.getLogger("bench")
        n_tokens = {}

        def stage_side() -> float:
            out = tmp / "out"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()

            def work() -> None:
                paths = {"train": tmp / "fmt/train.jsonl"}
                encoded, _ = encode.encode_and_check(hf, {"train": examples}, paths, log)
                n_tokens["stage"] = tokens.write_split(out, "train", encoded["train"], dtype)["n_tokens"]

            dt = timed(work)
            return n_tokens["stage"] / dt

        def raw_side() -> float:
            def work() -> None:
                ids = hf(texts, add_special_tokens=False)["input_ids"]
                n_tokens["raw"] = sum(len(x) for x in ids)

            dt = timed(work)
            return n_tokens["raw"] / dt

        def rust_side() -> float:
            rust = hf.backend_tokenizer
            dt = timed(lambda: [e.ids for e in rust.encode_batch_fast(texts, add_special_tokens=False)])
            return n_tokens["raw"] / dt

        raw_side()  # counts the tokens
        sides = {"pretokenize": stage_side, "raw": raw_side, "rust": rust_side}
        got = interleave(sides, 3 if quick else 5)
    a, b, c = median(got["pretokenize"]), median(got["raw"]), median(got["rust"])
    what = f"{len(examples):,} training examples, {n_tokens['raw']:,} tokens"
    return [
        Row(
            "pretokenize vs raw tokenizer batch encode (nets, byte_bpe)",
            round(a),
            round(b),
            "tok/s",
            round(paired_ratio(got, "pretokenize", "raw"), 3),
            ">= 0.8",
            meets(paired_ratio(got, "pretokenize", "raw"), ">= 0.8"),
            what,
            {"pretokenize": got["pretokenize"], "raw": got["raw"]},
        ),
        Row(
            "pretokenize vs the Rust tokenizer's encode_batch_fast",
            round(a),
            round(c),
            "tok/s",
            round(paired_ratio(got, "pretokenize", "rust"), 3),
            "",
            None,
            what + "; the floor: one encode, no HF wrapper, no checks, nothing written",
            {"pretokenize": got["pretokenize"], "rust": got["rust"]},
        ),
    ]
