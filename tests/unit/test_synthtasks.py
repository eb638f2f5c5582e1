"""smolforge.llm.tasks: requests planned per task, what a param change touches, records built."""

from __future__ import annotations

import dataclasses

from smolforge.llm.cache import Response
from smolforge.llm.client import Sampling
from smolforge.llm.tasks import (
    ConversationTask,
    QaTask,
    build_conversations,
    build_qa,
    plan_answers,
    plan_chunks,
    plan_conversations,
    plan_questions,
    read_words,
)

S = Sampling(0.7, 0.9, 64, [])
CONV = ConversationTask(["Explain {word}.", "STUDENT:"], ["bridge", "leaf"], 2, "STUDENT", "TEACHER",
                        ["kill"], 2, 0.8, S)  # fmt: skip
QA = QaTask(0, 0, 2, "Write {n} questions.", 'Essay "{title}":\n{text}\nWrite {n}.', "the author",
            "You are {persona}.", "{title}\n{text}\nQuestion: {question}", [5, 100], [5, 200], 0.8, S, S)  # fmt: skip
DOCS = [{"id": "a", "title": "A", "text": "Text a."}, {"id": "b", "title": "B", "text": "Text b."}]


def keys(reqs) -> list[str]:
    return [r.key("e") for r in reqs]


def test_conversation_requests_one_per_word_and_sample_each_with_its_seed():
    planned = plan_conversations(CONV, ["bridge", "leaf"], "m", 1)
    assert [(w, s) for w, s, _ in planned] == [("bridge", 0), ("bridge", 1), ("leaf", 0), ("leaf", 1)]
    assert planned[0][2].prompt == "Explain bridge.\nSTUDENT:" and planned[0][2].kind == "completion"
    assert len({r.seed for *_, r in planned}) == 4
    # a new word adds its requests and leaves the others as they were
    more = plan_conversations(CONV, ["bridge", "leaf", "room"], "m", 1)
    assert keys(r for *_, r in more)[:4] == keys(r for *_, r in planned)


def test_a_question_param_changes_only_question_requests():
    chunks = plan_chunks(QA, DOCS)
    assert [c.id for c in chunks] == ["a-0", "b-0"]
    assert plan_chunks(dataclasses.replace(QA, max_documents=1), DOCS)[0].id == "a-0"
    q = plan_questions(QA, chunks, "m", 1)
    assert q[0].messages == (("system", "Write 2 questions."), ("user", 'Essay "A":\nText a.\nWrite 2.'))

    def answer(req):
        return Response("1. What is it?\n2. What is it?\n3. Why this?\n4. How so?", "stop", 1, 1)

    planned, funnel = plan_answers(QA, chunks, q, answer, "m", 1)
    assert [p.question for p in planned] == ["What is it?", "Why this?", "How so?"]
    # a: keep, repeat, keep, surplus; b: three repeats, then the question a had no room for
    assert funnel.report()["rejected"] == {
        "not_a_question": 0,
        "length": 0,
        "near_duplicate": 4,
        "surplus": 1,
    }
    assert planned[0].request.messages == (
        ("system", "You are the author."),
        ("user", "A\nText a.\nQuestion: What is it?"),
    )

    q2 = plan_questions(dataclasses.replace(QA, question_prompt="Ask {n}: {text}"), chunks, "m", 1)
    assert set(keys(q2)).isdisjoint(keys(q))
    planned2, _ = plan_answers(dataclasses.replace(QA, persona="a poet"), chunks, q, answer, "m", 1)
    assert set(keys(p.request for p in planned2)).isdisjoint(keys(p.request for p in planned))
    assert [p.id for p in planned2] == [p.id for p in planned] == ["qa-a-0-0", "qa-a-0-1", "qa-b-0-0"]


def test_records_are_built_in_plan_order_and_failed_requests_are_left_out():
    planned = plan_conversations(CONV, ["bridge", "leaf"], "m", 1)
    texts = {
        planned[0][2].seed: " What is a bridge?\nTEACHER: It crosses rivers.",
        planned[1][2].seed: " What is a bridge?\nTEACHER: It crosses rivers.",  # a duplicate
        planned[2][2].seed: " What is a leaf?\nTEACHER: Armies kill leaves.",  # excluded
    }

    def answer(req):
        return Response(texts[req.seed], "stop", 1, 1) if req.seed in texts else None  # the last one failed

    records, funnel = build_conversations(CONV, planned, answer)
    assert [r["id"] for r in records] == ["conv-bridge-0"]
    assert funnel.n_in == 3 and funnel.rejected == {"near_duplicate": 1, "excluded": 1}

    chunks = plan_chunks(QA, DOCS)
    qa_planned, _ = plan_answers(QA, chunks, plan_questions(QA, chunks, "m", 1),
                                 lambda r: Response(f"What is {r.seed}?", "stop", 1, 1), "m", 1)  # fmt: skip
    assert len(qa_planned) == 2
    got = build_qa(QA, qa_planned, lambda r: Response('"It is a thing."', "stop", 1, 1))
    assert [r["messages"][1]["content"] for r in got[0]] == ["It is a thing."]  # the second repeats it
    assert got[1].rejected == {"near_duplicate": 1}


def test_word_list_file(tmp_path):
    path = tmp_path / "w.txt"
    path.write_text("# comment\n bridge \n\nleaf\nbridge\n")
    assert read_words(str(path)) == ["bridge", "leaf"] and read_words(["a", " a", "b"]) == ["a", "b"]
