"""smolforge.llm.synth: dialogue parsing, exclude words, questions and answers, near-duplicates, funnels."""

from __future__ import annotations

import pytest

from smolforge.llm.synth import (
    CONVERSATION_CHECKS,
    DialogueRules,
    Excluder,
    Funnel,
    NearDuplicates,
    chunk_text,
    clean_answer,
    fill,
    mentions,
    parse_conversation,
    parse_questions,
    request_seed,
    strip_quotes,
    trim_to_sentence,
)

RULES = DialogueRules("STUDENT", "TEACHER", min_turns=2)
NONE = Excluder([])


def parse(completion: str, word: str = "bridge", finish: str = "stop", excluder: Excluder = NONE):
    return parse_conversation("STUDENT:", completion, finish, word, RULES, excluder)


def test_a_well_formed_dialogue_becomes_messages():
    msgs, reason = parse(
        " What is a bridge?\nTEACHER: It crosses a river.\nSTUDENT: Why?\nteacher : To reach the other side.\n"
    )
    assert reason == ""
    assert msgs == [
        {"role": "user", "content": "What is a bridge?"},
        {"role": "assistant", "content": "It crosses a river."},
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "To reach the other side."},
    ]


def test_the_dialogue_ends_at_the_first_blank_line():
    msgs, reason = parse(
        " What is a bridge?\nTEACHER: It crosses a river.\n\nHere is another one.\nSTUDENT: x"
    )
    assert reason == "" and len(msgs) == 2


@pytest.mark.parametrize(
    ("completion", "reason"),
    [
        ("", "malformed_turn"),  # "STUDENT:" with nothing after it
        (" What is a bridge?\nTELEGURMUS: I am glad.", "malformed_turn"),  # unknown label
        (" What is a bridge?\nThe teacher smiles.", "malformed_turn"),  # no label
        (" What is a bridge?\nTEACHER:", "malformed_turn"),  # empty turn
        (" What is a bridge?\nSTUDENT: Really?\nTEACHER: Yes.", "not_alternating"),
        (" What is a bridge?", "too_short"),
        (" What is a river?\nTEACHER: Water that flows.", "word_missing"),  # first student turn
        (" What is an abridged book?\nTEACHER: A shorter bridge.", "word_missing"),  # a whole word only
        (" What is a bridge?\nTEACHER: It crosses.\nSTUDENT: Why?", "ends_with_student"),
    ],
)
def test_each_rule_rejects_with_its_reason(completion, reason):
    assert parse(completion) == (None, reason)
    assert reason in CONVERSATION_CHECKS


def test_the_word_may_be_inflected_and_in_any_case():
    assert parse(" Are BRIDGES old?\nTEACHER: Some are.")[1] == ""
    assert parse(" Who promised that?\nTEACHER: I did.", word="promise")[1] == ""


def test_a_completion_cut_by_max_tokens_loses_its_unfinished_sentence():
    cut = " What is a bridge?\nTEACHER: It crosses a river. You walk over it and"
    msgs, reason = parse(cut, finish="length")
    assert reason == "" and msgs[-1]["content"] == "It crosses a river."
    # nothing complete left of the last turn: it is dropped, so the student has the last word
    assert parse(" What is a bridge?\nTEACHER: Yes.\nSTUDENT: And what about", finish="length")[1] == ""
    assert parse(" What is a bridge?\nTEACHER: It is a", finish="length")[1] == "too_short"
    # a normal stop keeps the text as it is
    assert parse(" What is a bridge?\nTEACHER: It is a", finish="stop")[0][-1]["content"] == "It is a"


def test_exclude_matches_whole_words_in_any_case_not_substrings():
    ex = Excluder(["kill", "relig*", "sex"])
    assert ex.hit("They had a great skill.") is None  # the chat-builder defect: "kill" in "skill"
    assert ex.hit("Do not KILL it.") == "KILL"
    assert ex.hit("He killed it.") is None  # a whole word; "kill*" would match
    assert Excluder(["kill*"]).hit("He killed it.") == "killed"
    assert ex.hit("Religion and religious ideas") == "Religion"
    assert ex.hit("An irreligious view") is None
    assert ex.hit("Sussex and essex") is None
    msgs, reason = parse(" What is a bridge?\nTEACHER: A skill of builders.", excluder=ex)
    assert reason == "" and msgs
    assert parse(" What is a bridge?\nTEACHER: Armies kill for bridges.", excluder=ex) == (None, "excluded")
    assert Excluder([]).hit("anything") is None


def test_mentions():
    assert (
        mentions("The bridge.", "bridge") and mentions("bridges", "bridge") and mentions("Bridged!", "bridge")
    )
    assert not mentions("abridge", "bridge") and not mentions("bridgehead", "bridge")
    assert mentions("a c++ program", "c++")  # regex characters in a word are literal


def test_questions_lose_markers_and_quotes_and_keep_bounds():
    text = (
        "Here are two questions:\n"
        "1. What is the essay about?\n"
        '2) "Why do constraints help?"\n'
        "- How?\n"
        "Q3: **What would you remove first?**\n"
        "One: What does the author build on weekends?\n"
        "\n"
        "The answer is that it depends.\n"
    )
    got = parse_questions(text, [10, 200])
    assert got == [
        ("Here are two questions:", "not_a_question"),
        ("What is the essay about?", ""),
        ("Why do constraints help?", ""),
        ("How?", "length"),
        ("What would you remove first?", ""),
        ("What does the author build on weekends?", ""),
        ("The answer is that it depends.", "not_a_question"),
    ]


def test_answers_strip_wrapping_quotes_and_prefixes():
    assert clean_answer('"I built it because I needed it."', "stop", [5, 100]) == (
        "I built it because I needed it.",
        "",
    )
    assert clean_answer("Answer: “It took a weekend.”", "stop", [5, 100]) == ("It took a weekend.", "")
    # quotes inside are kept: only quotes around the whole answer go
    assert clean_answer('"Small" tools are "good".', "stop", [5, 100]) == ('"Small" tools are "good".', "")
    assert clean_answer('  ""  ', "stop", [0, 100]) == (None, "empty")
    assert clean_answer("", "stop", [0, 100]) == (None, "empty")


def test_answer_length_bounds_and_truncation():
    assert clean_answer("Yes.", "stop", [10, 100]) == (None, "length")
    assert clean_answer("x" * 101, "stop", [10, 100]) == (None, "length")
    assert clean_answer("It was hard. Then it got easier and", "length", [5, 100]) == ("It was hard.", "")
    assert clean_answer("It was hard and then it", "length", [5, 100]) == (None, "truncated")


def test_strip_quotes_and_trim_to_sentence():
    assert strip_quotes("'\"nested\"'") == "nested"
    assert strip_quotes('"a" and "b"') == '"a" and "b"'
    assert strip_quotes("«x»") == "x" and strip_quotes('"') == '"'
    assert trim_to_sentence('He said "stop." Then he') == 'He said "stop."'
    assert trim_to_sentence("Version 2.5 is out and") == ""  # a decimal point does not end a sentence


def test_near_duplicates_by_word_trigrams():
    seen = NearDuplicates(0.8)
    assert seen.add("What is the main idea of the essay about small tools?")
    assert not seen.add("what is the main idea of the essay about small tools")  # case, punctuation
    assert seen.add("Why did the author stop using big frameworks for small projects?")
    assert not seen.add("Why did the author stop using big frameworks for small projects? ")
    assert seen.add("What is the main idea of the essay about reading code?")  # shares a prefix only
    assert seen.add("Hi") and not seen.add("hi!")  # short texts compare as one shingle
    assert NearDuplicates(1.0).add("a b c d") and NearDuplicates(0.5).add("x")


def test_funnel_reports_yield_after_each_check_in_order():
    f = Funnel(["a", "b", "c"])
    f.n_in = 10
    for r in ["a", "a", "c"]:
        f.reject(r)
    assert f.report() == {
        "in": 10,
        "kept": 7,
        "rejected": {"a": 2, "b": 0, "c": 1},
        "yield": {"1_a": 8, "2_b": 8, "3_c": 7},
    }
    with pytest.raises(AssertionError):
        f.reject("d")


def test_chunks_pack_paragraphs_and_split_long_ones():
    paras = [f"Paragraph {i} " + "word " * 20 for i in range(6)]
    text = "\n\n".join(p.strip() for p in paras)
    assert chunk_text(text, 0) == [text] and chunk_text(text, 10_000) == [text] and chunk_text("  ", 0) == []
    chunks = chunk_text(text, 250)
    assert all(len(c) <= 250 for c in chunks) and len(chunks) == 3
    assert "\n\n".join(chunks) == text  # nothing lost, paragraphs intact
    long = " ".join(f"Sentence {i} is here." for i in range(40))
    parts = chunk_text(long, 100)
    assert all(len(p) <= 100 for p in parts) and " ".join(parts).split() == long.split()
    assert all(p.endswith("here.") for p in parts)  # split at sentence ends


def test_fill_and_seeds():
    assert fill("{word} in {x} {word}", word="a") == "a in {x} a"  # unknown braces stay
    assert request_seed(1, "conversations", "bridge", 0) == request_seed(1, "conversations", "bridge", 0)
    seeds = {request_seed(s, "conversations", w, k) for s in (1, 2) for w in ("a", "b") for k in (0, 1)}
    assert len(seeds) == 8 and all(0 <= s < 2**31 for s in seeds)
