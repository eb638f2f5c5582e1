"""Write words/common_nouns.txt: the most frequent common English nouns, one a line.

The chat-builder recipe at scale asks the embedded model for one student/teacher dialogue
per word (docs/chat.md, "chat-builder at scale"). This script made the shipped list once;
it is kept so the list can be remade or grown, and is not part of the pipeline:

    python -m venv /tmp/wl && /tmp/wl/bin/pip install wordfreq lemminflect
    /tmp/wl/bin/python tools/make_word_list.py --n 3000 --out words/common_nouns.txt

A word is kept when lemminflect knows it as a noun lemma (its own singular), not as an
adjective, adverb, auxiliary or proper noun, and not as an inflected verb ("doing",
"saw"); words are taken in wordfreq's English frequency order, skipping its 200 most
frequent (function words) and a short list of words a teaching dialogue should not be
about. Tools: wordfreq (frequency order) and lemminflect (parts of speech), both on PyPI.
"""

from __future__ import annotations

import argparse
from pathlib import Path

AVOID = {
    "shit", "fuck", "damn", "hell", "ass", "bitch", "dick", "porn", "vagina", "penis", "slave",
    "murderer", "murder", "rape", "suicide", "holocaust", "nazi", "drug", "drugs", "cocaine",
    "heroin", "whore", "bastard", "crap", "piss", "terrorist", "terrorism", "genocide", "god",
    "devil", "breast", "nude", "bomb", "bomber", "gun", "shotgun", "weapon",
}


def is_common_noun(word: str, lemmas: dict) -> bool:
    if "NOUN" not in lemmas or lemmas["NOUN"][0] != word:
        return False
    if set(lemmas) & {"ADJ", "ADV", "AUX", "PROPN"}:
        return False
    verb = lemmas.get("VERB")
    return not (verb and verb[0] != word) and not word.endswith("self")


def main() -> None:
    import lemminflect
    import wordfreq

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--out", type=Path, default=Path("words/common_nouns.txt"))
    args = ap.parse_args()
    skip = set(wordfreq.top_n_list("en", 200)) | AVOID
    words = []
    for w in wordfreq.top_n_list("en", 60_000):
        if len(words) == args.n:
            break
        if w.isascii() and w.isalpha() and len(w) >= 3 and w not in skip:
            if is_common_noun(w, lemminflect.getAllLemmas(w)):
                words.append(w)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(words) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(words)} words")


if __name__ == "__main__":
    main()
