"""How much of each evaluated answer is training text: the longest run of words an answer
shares with the training examples, and whether it names the prompt's subject.

A model that talks reuses short phrases ("is a kind of", "you can use it to"); a model
that recites copies whole sentences. Run after `evaluate@chat`:

    python tools/answer_overlap.py --answers data/evaluate/chat/answers.jsonl \\
        --train data/format/chat/train.jsonl [--subjects river,doctor,...]

Words are lowercased runs of letters, digits and apostrophes. --subjects gives each
prompt's subject word in prompt order (default: the prompt's last word of 3+ letters, "mean" and "for" skipped); an
answer "names" it when the word or its plural appears. Prints a Markdown table per
answering model (finetune, gguf) and the medians. Dev tool, not a pipeline stage.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(ws: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)}


def longest_shared(answer: list[str], corpus: list[list[str]], index: dict[int, set]) -> list[str]:
    """The longest run of `answer`'s words that also occurs in one text of `corpus`."""
    best: list[str] = []
    for n in range(1, len(answer) + 1):
        if n not in index:
            index[n] = set().union(*(ngrams(ws, n) for ws in corpus))
        hit = next(
            (
                list(g)
                for g in (tuple(answer[i : i + n]) for i in range(len(answer) - n + 1))
                if g in index[n]
            ),
            None,
        )
        if hit is None:
            break  # no run of n words is shared, so none longer is
        best = hit
    return best


QUESTION_WORDS = {"mean", "for", "does", "what", "the", "word", "why", "how", "who", "when", "where"}


def default_subject(prompt: str) -> str:
    """The prompt's last word of 3+ letters that is not a question's frame ("mean", "for")."""
    return [w for w in words(prompt) if len(w) >= 3 and w not in QUESTION_WORDS][-1]


def names(answer: list[str], subject: str) -> bool:
    s = subject.lower()
    return any(w in (s, s + "s", s + "es") for w in answer)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--answers", type=Path, required=True)
    ap.add_argument("--train", type=Path, required=True, help="format's train.jsonl (messages or text)")
    ap.add_argument("--subjects", default="", help="comma-separated subject of each prompt, in order")
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.answers.read_text().splitlines() if line.strip()]
    corpus = []
    for line in args.train.read_text().splitlines():
        ex = json.loads(line)
        corpus += [words(m["content"]) for m in ex.get("messages", [])] + [words(ex.get("text", ""))]
    subjects = args.subjects.split(",") if args.subjects else [default_subject(r["prompt"]) for r in rows]
    index: dict[int, set] = {}
    for who in ("finetune", "gguf"):
        if not all(who in r for r in rows):
            continue
        print(
            f"\n### {who}\n\n| prompt | names the subject | longest run shared with training text |\n|---|---|---|"
        )
        runs, named = [], 0
        for r, subject in zip(rows, subjects, strict=True):
            ans = words(r[who])
            run = longest_shared(ans, corpus, index)
            runs.append(len(run))
            named += names(ans, subject)
            print(
                f'| {r["prompt"]} | {"yes" if names(ans, subject) else "no"} | {len(run)} words: "{" ".join(run)}" |'
            )
        print(
            f"\n{who}: {named} of {len(rows)} answers name their subject; median longest shared run {statistics.median(runs)} words"
        )


if __name__ == "__main__":
    main()
