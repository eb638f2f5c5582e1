"""The two tasks of stage synthesize: which requests they make and the records they keep.

Each task is a frozen dataclass that is also its params.yaml subsection (the params
loader fills and checks it). `plan_*` turn the task and its inputs into `Request`s, in a
fixed order, each with a seed derived from the stage seed and the request's identity, so
a changed param changes exactly the requests it enters. `build_*` turn the answers
(looked up by request; None for a request that failed) into records and a `Funnel` of
rejections, in plan order, so the same answers always give the same records.

Records use the chat messages shape:
`{"id", "source": "synthesize", "task", "about": word or document id, "messages"}`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from smolforge.llm import synth
from smolforge.llm.cache import Response
from smolforge.llm.client import Request, Sampling

Answer = Callable[[Request], Response | None]


def _positive(obj: object, *names: str) -> list[str]:
    return [f"{n}: expected a number > 0" for n in names if getattr(obj, n) <= 0]


def _share(obj: object, *names: str) -> list[str]:
    return [f"{n}: expected a share between 0 and 1" for n in names if not 0 <= getattr(obj, n) <= 1]


def sampling_errors(s: Sampling, name: str) -> list[str]:
    errors = [] if s.temperature >= 0 else [f"{name}.temperature: expected a number >= 0"]
    errors += [] if 0 < s.top_p <= 1 else [f"{name}.top_p: expected a number in (0, 1]"]
    return errors + ([] if s.max_tokens > 0 else [f"{name}.max_tokens: expected a number > 0"])


# ---- conversations


@dataclass(frozen=True)
class ConversationTask:
    prompt_lines: list[str]  # joined by newlines, {word} filled in; the last line opens the dialogue
    words: list[str] | str  # the words, or a file with one word a line
    samples_per_word: int
    student_label: str
    teacher_label: str
    exclude: list[str]  # whole words, any case; "stem*" for every word starting with stem
    min_turns: int
    near_duplicate: float
    sampling: Sampling

    def check(self) -> list[str]:
        errors = _positive(self, "samples_per_word", "min_turns") + _share(self, "near_duplicate")
        if isinstance(self.words, str) and not Path(self.words).is_file():
            errors.append(f"words: file {self.words!r} not found")
        last = self.prompt_lines[-1] if self.prompt_lines else ""
        if not re.fullmatch(rf"\s*{re.escape(self.student_label)}\s*:\s*", last):
            errors.append(f"prompt_lines: the last line must be the student's label ({self.student_label}:)")
        return errors + sampling_errors(self.sampling, "sampling")


def read_words(words: list[str] | str) -> list[str]:
    """The word list, in order, without blanks, `#` comments or repeats."""
    lines = words if isinstance(words, list) else Path(words).read_text(encoding="utf-8").splitlines()
    return list(dict.fromkeys(w.strip() for w in lines if w.strip() and not w.strip().startswith("#")))


def plan_conversations(
    t: ConversationTask, words: list[str], model: str, seed: int
) -> list[tuple[str, int, Request]]:
    """(word, sample, request): one plain completion per word and sample."""
    prompt = "\n".join(t.prompt_lines)
    return [
        (
            w,
            s,
            Request(
                model, t.sampling, synth.request_seed(seed, "conversations", w, s), synth.fill(prompt, word=w)
            ),
        )
        for w in words
        for s in range(t.samples_per_word)
    ]


def build_conversations(
    t: ConversationTask, planned: list[tuple[str, int, Request]], answer: Answer
) -> tuple[list[dict], synth.Funnel]:
    """The kept conversations, and the funnel of every answer received."""
    funnel, seen = synth.Funnel(synth.CONVERSATION_CHECKS), synth.NearDuplicates(t.near_duplicate)
    rules, excluder = (
        synth.DialogueRules(t.student_label, t.teacher_label, t.min_turns),
        synth.Excluder(t.exclude),
    )
    records = []
    for word, s, req in planned:
        if (resp := answer(req)) is None:
            continue
        funnel.n_in += 1
        msgs, reason = synth.parse_conversation(
            t.prompt_lines[-1], resp.text, resp.finish_reason, word, rules, excluder
        )
        if not reason and not seen.add("\n".join(m["content"] for m in msgs)):
            reason = "near_duplicate"
        if reason:
            funnel.reject(reason)
            continue
        rid = "conv-" + re.sub(r"\W+", "-", word.lower()).strip("-") + f"-{s}"
        records.append(
            {"id": rid, "source": "synthesize", "task": "conversations", "about": word, "messages": msgs}
        )
    return records, funnel


# ---- qa


@dataclass(frozen=True)
class QaTask:
    max_documents: int  # 0: every document
    chunk_chars: int  # longer documents are split at paragraphs; 0: whole documents
    n_questions: int  # per document or chunk
    question_system: str  # {n}
    question_prompt: str  # {title}, {text}, {n}
    persona: str
    answer_system: str  # {persona}
    answer_prompt: str  # {title}, {text}, {question}
    question_chars: list[int]  # [min, max]
    answer_chars: list[int]  # [min, max]
    near_duplicate: float
    question_sampling: Sampling
    answer_sampling: Sampling

    def check(self) -> list[str]:
        errors = _positive(self, "n_questions") + _share(self, "near_duplicate")
        for name in ("question_chars", "answer_chars"):
            b = getattr(self, name)
            if len(b) != 2 or not 0 <= b[0] <= b[1]:
                errors.append(f"{name}: expected [min, max] with 0 <= min <= max, got {b}")
        errors += sampling_errors(self.question_sampling, "question_sampling")
        return errors + sampling_errors(self.answer_sampling, "answer_sampling")


@dataclass(frozen=True)
class Chunk:
    id: str  # <document id>-<k>
    doc: dict  # scrape's record
    text: str


@dataclass(frozen=True)
class Planned:
    id: str  # the record's id: qa-<chunk id>-<j>
    chunk: Chunk
    question: str
    request: Request


def plan_chunks(t: QaTask, docs: list[dict]) -> list[Chunk]:
    """The first max_documents documents, each split into chunks of at most chunk_chars."""
    docs = docs[: t.max_documents] if t.max_documents > 0 else docs
    return [
        Chunk(f"{d['id']}-{k}", d, text)
        for d in docs
        for k, text in enumerate(synth.chunk_text(d["text"], t.chunk_chars))
    ]


def plan_questions(t: QaTask, chunks: list[Chunk], model: str, seed: int) -> list[Request]:
    """One chat request for n_questions questions per chunk."""
    system = synth.fill(t.question_system, n=t.n_questions)
    return [
        Request(
            model, t.question_sampling, synth.request_seed(seed, "questions", c.id),
            messages=(("system", system), ("user", synth.fill(t.question_prompt, title=c.doc["title"], text=c.text, n=t.n_questions))),
        )
        for c in chunks
    ]  # fmt: skip


def plan_answers(
    t: QaTask, chunks: list[Chunk], questions: list[Request], answer: Answer, model: str, seed: int
) -> tuple[list[Planned], synth.Funnel]:
    """One answer request per kept question, and the funnel of the question lines."""
    funnel, seen = synth.Funnel(synth.QUESTION_CHECKS), synth.NearDuplicates(t.near_duplicate)
    system, planned = synth.fill(t.answer_system, persona=t.persona), []
    for chunk, req in zip(chunks, questions):
        if (resp := answer(req)) is None:
            continue
        kept: list[str] = []
        for question, reason in synth.parse_questions(resp.text, t.question_chars):
            funnel.n_in += 1
            reason = reason or ("near_duplicate" if seen.repeats(question) else "")
            reason = reason or ("surplus" if len(kept) == t.n_questions else "")
            if reason:
                funnel.reject(reason)
            else:
                seen.add(question)  # a surplus question is not kept, so it cannot repeat
                kept.append(question)
        for j, question in enumerate(kept):
            user = synth.fill(t.answer_prompt, title=chunk.doc["title"], text=chunk.text, question=question)
            msgs = (("system", system), ("user", user))
            areq = Request(
                model,
                t.answer_sampling,
                synth.request_seed(seed, "answer", chunk.id, question),
                messages=msgs,
            )
            planned.append(Planned(f"qa-{chunk.id}-{j}", chunk, question, areq))
    return planned, funnel


def build_qa(t: QaTask, planned: list[Planned], answer: Answer) -> tuple[list[dict], synth.Funnel]:
    """The kept question-answer pairs, and the funnel of every answer received."""
    funnel, seen = synth.Funnel(synth.ANSWER_CHECKS), synth.NearDuplicates(t.near_duplicate)
    records = []
    for item in planned:
        if (resp := answer(item.request)) is None:
            continue
        funnel.n_in += 1
        text, reason = synth.clean_answer(resp.text, resp.finish_reason, t.answer_chars)
        if not reason and not seen.add(text):
            reason = "near_duplicate"
        if reason:
            funnel.reject(reason)
            continue
        msgs = [{"role": "user", "content": item.question}, {"role": "assistant", "content": text}]
        records.append(
            {
                "id": item.id,
                "source": "synthesize",
                "task": "qa",
                "about": item.chunk.doc["id"],
                "messages": msgs,
            }
        )
    return records, funnel
