"""Stage synthesize: in-process against a fake OpenAI-compatible server (records, cache,
resume, failures, secrets, bad input) and, slow, against the real embedded llama.cpp server."""

from __future__ import annotations

import json

import pytest
import yaml

from smolforge.core.cli import run
from stages import synthesize
from tests.conftest import listing
from tests.fakeopenai import serve, status

OUTPUTS = [
    "data/synthesize",
    ".cache/synthesize",
    "metrics/synthesize.json",
    "metrics/synthesize_timing.json",
]
KEY = "sk-smolforge-test-9f8e7d6c5b4a"  # recognisable, so a leak anywhere is found
DOCS = [
    {"id": "doc-a", "source": "scrape", "url": "sites/a.html", "title": "Small Tools", "date": None,
     "text": "Small tools are easy to understand.\n\nThey do one thing well.", "notes": "", "n_words": 13},
    {"id": "doc-b", "source": "scrape", "url": "sites/b.html", "title": "Old Tools", "date": "2020-01",
     "text": "Old tools still work.", "notes": "", "n_words": 4},
]  # fmt: skip


def argv(params) -> list[str]:
    out, cache, metrics, timing = OUTPUTS
    return ["--params", str(params), "--scrape", "data/scrape", "--out", out, "--cache", cache,
            "--metrics", metrics, "--timing", timing]  # fmt: skip


def set_params(path, **changes) -> None:
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        node = data["synthesize"]
        *parents, last = key.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    path.write_text(yaml.safe_dump(data))


def read(folder) -> tuple[list[dict], list[dict], dict, dict]:
    out = folder / "data/synthesize"
    conv = [json.loads(line) for line in (out / "conversations.jsonl").read_text().splitlines()]
    qa = [json.loads(line) for line in (out / "qa.jsonl").read_text().splitlines()]
    return (
        conv,
        qa,
        json.loads((folder / OUTPUTS[2]).read_text()),
        json.loads((folder / OUTPUTS[3]).read_text()),
    )


def outputs(folder) -> dict[str, bytes]:
    return {
        p: (folder / "data/synthesize" / p).read_bytes()
        for p in ("conversations.jsonl", "qa.jsonl", "meta.json")
    }


@pytest.fixture
def workdir(tiny_params, tmp_path, monkeypatch):
    """tmp_path as the working directory, with a small scrape output and the key in the environment."""
    scrape = tmp_path / "data/scrape"
    scrape.mkdir(parents=True)
    (scrape / "pages.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (scrape / "meta.json").write_text(json.dumps({"format_version": 1, "produced_by": "scrape"}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SMOLFORGE_TEST_KEY", KEY)
    set_params(tiny_params, api_key_env="SMOLFORGE_TEST_KEY", max_retries=2, qa__n_questions=2,
               qa__max_documents=0, conversations__words=["bridge", "leaf", "room"])  # fmt: skip
    return tmp_path


def test_records_from_a_fake_server_then_a_rerun_from_the_cache(workdir, tiny_params):
    with serve() as srv:
        set_params(tiny_params, base_url=srv.base_url)
        synthesize.main(argv(tiny_params))
        first, first_metrics = outputs(workdir), (workdir / OUTPUTS[2]).read_bytes()
        conv, qa, metrics, timing = read(workdir)
        assert len(srv.posts()) == 3 + 2 + 4  # conversations, question requests, answers

        assert [c["id"] for c in conv] == ["conv-bridge-0", "conv-leaf-0", "conv-room-0"]
        assert conv[0] == {
            "id": "conv-bridge-0",
            "source": "synthesize",
            "task": "conversations",
            "about": "bridge",
            "messages": [
                {"role": "user", "content": "What is a bridge?"},
                {"role": "assistant", "content": "A bridge is something people use every day."},
            ],
        }
        assert [q["id"] for q in qa] == ["qa-doc-a-0-0", "qa-doc-a-0-1", "qa-doc-b-0-0", "qa-doc-b-0-1"]
        assert qa[0]["about"] == "doc-a" and qa[0]["messages"] == [
            {"role": "user", "content": "What is Small Tools about?"},
            {
                "role": "assistant",
                "content": "I wrote about this because what is small tools about matters to me. It still does.",
            },
        ]  # the answer's wrapping quotes are gone
        assert metrics["records"] == {"conversations": 3, "qa": 4}
        assert metrics["requests"]["total"] == 9 and sum(metrics["requests"]["failed"].values()) == 0
        assert (
            metrics["qa"]["questions"]["in"] == 6 and metrics["qa"]["questions"]["rejected"]["surplus"] == 2
        )
        assert metrics["conversations"]["yield"]["8_near_duplicate"] == 3
        assert timing["requests_made"] == 9 and timing["from_cache"] == 0 and timing["tokens_out"] > 0
        meta = json.loads(first["meta.json"])
        assert meta["endpoint"] == srv.base_url and meta["counts"] == metrics
        persona = yaml.safe_load(tiny_params.read_text())["synthesize"]["qa"]["persona"]
        assert meta["persona"] == persona  # the voice of the QA answers: format@chat's default persona

        # the request carries the stage's sampling params and a per-request seed
        comp = srv.posts()[0].body
        assert comp["max_tokens"] == 48 and comp["stop"] == ["\n\n"] and comp["prompt"].endswith("STUDENT:")

        synthesize.main(argv(tiny_params))
        assert len(srv.posts()) == 9  # nothing asked again
        assert outputs(workdir) == first and (workdir / OUTPUTS[2]).read_bytes() == first_metrics
        assert read(workdir)[3]["from_cache"] == 9 and read(workdir)[3]["requests_made"] == 0

        # a changed param re-asks exactly the requests it enters: the persona is in every answer request
        set_params(tiny_params, qa__persona="a retired carpenter")
        synthesize.main(argv(tiny_params))
        assert len(srv.posts()) == 9 + 4
        assert all("a retired carpenter" in p.body["messages"][0]["content"] for p in srv.posts()[9:])
        # ... and one more word asks for one more conversation
        set_params(tiny_params, conversations__words=["bridge", "leaf", "room", "camera"])
        synthesize.main(argv(tiny_params))
        assert len(srv.posts()) == 9 + 4 + 1 and '"camera"' in srv.posts()[-1].body["prompt"]


def test_an_interrupted_run_fails_cleanly_and_the_rerun_asks_only_for_the_rest(workdir, tiny_params, caplog):
    with serve() as srv:
        set_params(tiny_params, base_url=srv.base_url, max_retries=1, backoff_s=0.0)
        srv.inject(status(500), status(500))  # the first request fails both attempts
        assert run(synthesize.main, argv(tiny_params)) == 2
        assert "1 of 9 requests failed after retries (http_5xx 1)" in caplog.text
        assert "a rerun asks only for the rest" in caplog.text
        assert not (workdir / "data/synthesize").exists() and not (workdir / "metrics").exists()
        assert len(srv.posts()) == 2 + 8
        cache_lines = (workdir / ".cache/synthesize/requests.jsonl").read_text().splitlines()
        assert len(cache_lines) == 8

        assert run(synthesize.main, argv(tiny_params)) == 0
        assert len(srv.posts()) == 2 + 8 + 1  # only the missing one
        _, _, metrics, timing = read(workdir)
    assert metrics["records"] == {"conversations": 3, "qa": 4}
    assert timing["from_cache"] == 8 and timing["requests_made"] == 1


def test_failures_within_max_failed_share_are_counted(workdir, tiny_params):
    with serve() as srv:
        set_params(tiny_params, base_url=srv.base_url, max_retries=0, max_failed_share=0.5)
        srv.inject(status(503))
        synthesize.main(argv(tiny_params))
    conv, _, metrics, timing = read(workdir)
    assert [c["about"] for c in conv] == ["leaf", "room"]
    assert metrics["requests"]["failed"]["http_5xx"] == 1 and timing["failed"] == 1


def test_the_api_key_is_sent_but_written_nowhere(workdir, tiny_params, caplog, capsys):
    with serve() as srv:
        set_params(tiny_params, base_url=srv.base_url)
        synthesize.main(argv(tiny_params))
    assert all(p.headers["authorization"] == f"Bearer {KEY}" for p in srv.posts())
    assert "SMOLFORGE_TEST_KEY" in (workdir / "params.yaml").read_text()  # only its name is in params
    files = [path for path in workdir.rglob("*") if path.is_file()]
    assert workdir / "data/synthesize/conversations.jsonl" in files  # the scan sees the outputs
    for path in files:
        assert KEY.encode() not in path.read_bytes(), path
    captured = capsys.readouterr()
    assert KEY not in caplog.text and KEY not in captured.out + captured.err


def test_a_missing_key_or_scrape_output_is_a_stage_error_and_writes_nothing(
    workdir, tiny_params, caplog, monkeypatch
):
    with serve() as srv:
        set_params(tiny_params, base_url=srv.base_url)
        monkeypatch.delenv("SMOLFORGE_TEST_KEY")
        assert run(synthesize.main, argv(tiny_params)) == 2
        assert "synthesize.api_key_env: environment variable SMOLFORGE_TEST_KEY is not set" in caplog.text
        monkeypatch.setenv("SMOLFORGE_TEST_KEY", KEY)
        (workdir / "data/scrape/meta.json").unlink()
        assert run(synthesize.main, argv(tiny_params)) == 2
        assert (
            "data/scrape/meta.json: file not found (written by stage scrape; run: dvc repro scrape)"
            in caplog.text
        )
        (workdir / "data/scrape/meta.json").write_text('{"format_version": 1}')
        (workdir / "data/scrape/pages.jsonl").write_text('{"id": "x", "title": "T"}\n')
        assert run(synthesize.main, argv(tiny_params)) == 2
        assert 'data/scrape/pages.jsonl:1: missing field "text" (written by stage scrape' in caplog.text
    assert srv.calls == []
    assert listing(workdir) == [
        "data",
        "data/scrape",
        "data/scrape/meta.json",
        "data/scrape/pages.jsonl",
        "params.yaml",
    ]


def test_bad_params_report_every_problem(workdir, tiny_params, caplog):
    set_params(tiny_params, modle="x", tasks=["conversations", "chat"])
    assert run(synthesize.main, argv(tiny_params)) == 2
    assert "synthesize.modle: unknown key (did you mean model?)" in caplog.text
    assert "synthesize.tasks[1]: expected one of 'conversations', 'qa', got 'chat'" in caplog.text
    data = yaml.safe_load(tiny_params.read_text())
    del data["synthesize"]["modle"]
    tiny_params.write_text(yaml.safe_dump(data))
    set_params(tiny_params, tasks=["qa"], conversations__words="no/such/words.txt", qa__answer_chars=[10],
               qa__answer_sampling={"temperature": 0.7, "top_p": 0.9, "max_tokens": 0, "stop": []},
               conversations__prompt_lines=["Explain {word}."])  # fmt: skip
    assert run(synthesize.main, argv(tiny_params)) == 2
    for msg in (  # the checks of both tasks, at once
        "synthesize.conversations.words: file 'no/such/words.txt' not found",
        "synthesize.conversations.prompt_lines: the last line must be the student's label (STUDENT:)",
        "synthesize.qa.answer_chars: expected [min, max]",
        "synthesize.qa.answer_sampling.max_tokens: expected a number > 0",
    ):
        assert msg in caplog.text
    set_params(tiny_params, conversations__words=["a"], conversations__prompt_lines=["STUDENT:"], qa__answer_chars=[1, 2],
               qa__answer_sampling={"temperature": 0.7, "top_p": 0.9, "max_tokens": 8, "stop": []},
               base_url="localhost:8000", concurrency=0)  # fmt: skip
    assert run(synthesize.main, argv(tiny_params)) == 2
    assert "synthesize.concurrency: expected a number > 0" in caplog.text
    assert "synthesize.base_url: expected 'embedded' or an http(s) URL, got 'localhost:8000'" in caplog.text
    assert not (workdir / "metrics").exists() and not (workdir / ".cache").exists()


def test_a_wrong_key_stops_at_the_first_answer(workdir, tiny_params, caplog):
    with serve() as srv:
        set_params(tiny_params, base_url=srv.base_url)
        srv.inject(*[status(401)] * 20)
        assert run(synthesize.main, argv(tiny_params)) == 2
    assert (
        "the server refused the API key (params.yaml: synthesize.base_url, model, api_key_env)" in caplog.text
    )
    assert len(srv.posts()) <= 2 and not (workdir / "data/synthesize").exists()  # 2: one was on its way


def test_a_word_list_file(workdir, tiny_params):
    (workdir / "words.txt").write_text("# seed words\nbridge\n\nleaf\nbridge\n")
    with serve() as srv:
        set_params(
            tiny_params, base_url=srv.base_url, tasks=["conversations"], conversations__words="words.txt"
        )
        synthesize.main(argv(tiny_params))
    conv, qa, metrics, _ = read(workdir)
    assert [c["about"] for c in conv] == ["bridge", "leaf"] and qa == []
    assert metrics["qa"]["chunks"] == 0 and len(srv.posts()) == 2


@pytest.mark.slow
def test_the_real_embedded_server_writes_real_records(workdir, tiny_params):
    set_params(tiny_params, api_key_env="", conversations__words=["bridge", "leaf"], qa__max_documents=1,
               qa__n_questions=1)  # fmt: skip
    synthesize.main(argv(tiny_params))
    conv, qa, metrics, timing = read(workdir)
    assert metrics["requests"]["total"] >= 3 and timing["requests_made"] == metrics["requests"]["total"]
    assert timing["tokens_out"] > 0 and timing["tokens_per_s"] > 0 and timing["server_start_s"] > 0
    # two conversations, one question request, and an answer request per question kept
    assert metrics["conversations"]["in"] == 2 and metrics["qa"]["chunks"] == 1
    assert metrics["requests"]["total"] == 3 + metrics["qa"]["questions"]["kept"]
    for rec in conv + qa:
        assert rec["messages"] and all(m["content"] for m in rec["messages"])
    assert (workdir / ".cache/synthesize/server.log").is_file()
    meta = json.loads((workdir / "data/synthesize/meta.json").read_text())
    assert meta["endpoint"] == "embedded:SmolLM2-135M-Instruct.Q4_1.gguf"
    # same params, same answers: the rerun needs no server and writes the same bytes
    first = outputs(workdir)
    synthesize.main(argv(tiny_params))
    assert outputs(workdir) == first and read(workdir)[3]["server_start_s"] == 0
