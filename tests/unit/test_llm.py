"""smolforge.llm.client against a fault-injecting OpenAI-compatible server on 127.0.0.1: retries,
errors, cache keys, concurrency, and resuming after a crash without repeating requests."""

from __future__ import annotations

import dataclasses
import email.utils
import time

import pytest

from smolforge.llm.cache import RequestCache
from smolforge.llm.client import (
    AskStats,
    Client,
    EndpointError,
    Request,
    RequestFailed,
    RetryPolicy,
    Sampling,
    _retry_after,
    ask_all,
)
from tests import fakeopenai as fake_server
from tests.fakeopenai import drop, empty, malformed, silence, status
from tests.httpfixtures import free_port

SAMPLING = Sampling(temperature=0.7, top_p=0.9, max_tokens=32, stop=["\n\n"])
POLICY = RetryPolicy(timeout_s=5.0, max_retries=2, backoff_s=1.0, backoff_max_s=1.5, max_wait_s=10.0)
CHAT = Request("m", SAMPLING, 11, messages=(("system", "s"), ("user", 'Essay "Tools":\n\ntext')))
COMPLETION = Request("m", SAMPLING, 12, prompt='the meaning of "bridge"\nSTUDENT:')


def client(base_url: str, **policy) -> tuple[Client, list[float]]:
    """A client whose waits are recorded instead of slept (no test waits for real)."""
    waits: list[float] = []
    return Client(base_url, "sk-test", dataclasses.replace(POLICY, **policy), sleep=waits.append), waits


def failure(c: Client, req: Request = CHAT) -> RequestFailed:
    with pytest.raises(RequestFailed) as e:
        c.ask(req)
    return e.value


def test_chat_and_completion_send_everything_that_determines_the_answer():
    with fake_server.serve() as srv:
        c, waits = client(srv.base_url)
        chat, comp = c.ask(CHAT), c.ask(COMPLETION)
    assert chat.text.startswith("1. What is Tools about?") and chat.finish_reason == "stop"
    assert (
        comp.text.startswith(" What is a bridge?") and comp.completion_tokens > 0 and comp.prompt_tokens > 0
    )
    first, second = srv.posts()
    assert first.path == "/v1/chat/completions" and second.path == "/v1/completions"
    assert first.body["messages"] == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": 'Essay "Tools":\n\ntext'},
    ]
    sent = {k: first.body[k] for k in ("model", "temperature", "top_p", "max_tokens", "stop", "seed")}
    assert sent == {
        "model": "m",
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 32,
        "stop": ["\n\n"],
        "seed": 11,
    }
    assert second.body["prompt"] == COMPLETION.prompt and second.body["seed"] == 12
    assert first.headers["authorization"] == "Bearer sk-test"
    assert first.headers["x-stainless-retry-count"] == "0"  # the openai client's own retries are off
    assert waits == [] and c.stats.requests == 2 and c.stats.retries == 0


def test_refused_connection_is_retried_a_bounded_number_of_times():
    c, waits = client(f"http://127.0.0.1:{free_port()}/v1")
    e = failure(c)
    assert e.reason == "connection" and "3 attempts" in e.detail
    assert c.stats.requests == 3 and c.stats.retries == 2 and waits == [1.0, 1.5]  # doubling, capped


def test_500s_then_success():
    with fake_server.serve() as srv:
        srv.inject(status(500), status(503))
        c, waits = client(srv.base_url)
        assert c.ask(CHAT).text.startswith("1.")
    assert len(srv.posts()) == 3 and waits == [1.0, 1.5]
    assert [p.headers["x-stainless-retry-count"] for p in srv.posts()] == ["0", "0", "0"]


def test_500s_that_never_stop_fail_after_the_retries():
    with fake_server.serve() as srv:
        srv.inject(*[status(500)] * 10)
        c, _ = client(srv.base_url, max_retries=3)
        e = failure(c)
    assert e.reason == "http_5xx" and len(srv.posts()) == 4  # 1 + max_retries


def test_429_waits_as_long_as_retry_after_says():
    with fake_server.serve() as srv:
        srv.inject(status(429, {"Retry-After": "4"}), status(429, {"retry-after-ms": "250"}))
        c, waits = client(srv.base_url)
        assert c.ask(CHAT).text
    assert waits == [4.0, 0.25] and len(srv.posts()) == 3


def test_a_retry_after_above_max_wait_fails_at_once():
    with fake_server.serve() as srv:
        srv.inject(status(429, {"Retry-After": "3600"}))
        c, waits = client(srv.base_url)
        e = failure(c)
    assert e.reason == "retry_after_too_long" and "3600" in e.detail
    assert len(srv.posts()) == 1 and waits == []


def test_read_timeout_is_retried():
    with fake_server.serve() as srv:
        srv.inject(silence(30))
        c, waits = client(srv.base_url, timeout_s=0.5)
        t0 = time.monotonic()
        assert c.ask(CHAT).text
        assert time.monotonic() - t0 < 10
    assert len(srv.posts()) == 2 and waits == [1.0]
    with fake_server.serve() as srv:
        srv.inject(*[silence(30)] * 3)
        c, _ = client(srv.base_url, timeout_s=0.3, max_retries=1)
        assert failure(c).reason == "timeout"
    assert len(srv.posts()) == 2


@pytest.mark.parametrize(
    "fault",
    [malformed(), fake_server.body({"id": "x"}), fake_server.body({"choices": []}), drop()],
    ids=["malformed-json", "no-choices", "empty-choices", "dropped"],
)
def test_malformed_answers_and_dropped_connections_are_retried(fault):
    with fake_server.serve() as srv:
        srv.inject(fault)
        c, _ = client(srv.base_url)
        assert c.ask(CHAT).text.startswith("1.")
    assert len(srv.posts()) == 2
    with fake_server.serve() as srv:
        srv.inject(fault, fault, fault)
        c, _ = client(srv.base_url)
        assert failure(c).reason in ("bad_response", "connection")
    assert len(srv.posts()) == 3


def test_empty_content_is_an_answer_not_a_fault():
    with fake_server.serve() as srv:
        srv.inject(empty())
        c, _ = client(srv.base_url)
        assert c.ask(CHAT).text == ""
    assert len(srv.posts()) == 1


def test_client_errors_are_not_retried():
    with fake_server.serve() as srv:
        srv.inject(status(400))
        c, _ = client(srv.base_url)
        assert failure(c).reason == "http_4xx"
        for code, words in (
            (401, "refused the API key"),
            (403, "refused the API key"),
            (404, "no such model"),
        ):
            srv.inject(status(code))
            c, _ = client(srv.base_url)
            with pytest.raises(EndpointError, match=words):
                c.ask(CHAT)
            # the endpoint refuses everything: the client sends nothing more (other workers'
            # next requests stop here instead of reaching the server)
            assert failure(c).reason == "cancelled"
    assert len(srv.posts()) == 4


def test_retry_after_dates():
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < _retry_after({"retry-after": when}) <= 30
    assert _retry_after({"retry-after": "soon"}) is None and _retry_after({}) is None
    assert _retry_after({"retry-after": "1.5"}) == 1.5


def test_the_cache_key_changes_exactly_with_what_determines_the_answer():
    base = CHAT.key("http://a/v1")
    assert base == dataclasses.replace(CHAT).key("http://a/v1")  # stable
    variants = [
        CHAT.key("http://b/v1"),
        dataclasses.replace(CHAT, model="m2").key("http://a/v1"),
        dataclasses.replace(CHAT, seed=12).key("http://a/v1"),
        dataclasses.replace(CHAT, messages=(("system", "s"), ("user", "other"))).key("http://a/v1"),
        dataclasses.replace(CHAT, messages=None, prompt="s").key("http://a/v1"),
        *(
            dataclasses.replace(CHAT, sampling=dataclasses.replace(SAMPLING, **{k: v})).key("http://a/v1")
            for k, v in (("temperature", 0.8), ("top_p", 1.0), ("max_tokens", 33), ("stop", []))
        ),
    ]
    assert base not in variants and len(set(variants)) == len(variants)


def reqs(n: int) -> list[Request]:
    return [
        dataclasses.replace(COMPLETION, prompt=f'the meaning of "word{i}"\nSTUDENT:', seed=i)
        for i in range(n)
    ]


def test_ask_all_uses_the_cache_and_asks_only_for_the_rest(tmp_path):
    with fake_server.serve() as srv:
        with RequestCache(tmp_path / "r.jsonl") as cache:
            stats = AskStats()
            got = ask_all(reqs(3), cache, "e", lambda: client(srv.base_url)[0], 2, stats)
        assert len(got) == 3 and stats.requests == 3 and stats.from_cache == 0 and stats.tokens_out > 0
        with RequestCache(tmp_path / "r.jsonl") as cache:
            stats, connected = AskStats(), []
            again = ask_all(
                reqs(5), cache, "e", lambda: connected.append(1) or client(srv.base_url)[0], 2, stats
            )
        assert stats.from_cache == 3 and stats.requests == 2 and len(again) == 5
        with RequestCache(tmp_path / "r.jsonl") as cache:
            stats = AskStats()
            ask_all(reqs(5), cache, "e", lambda: pytest.fail("nothing to ask: no server needed"), 2, stats)
        assert stats.from_cache == 5
    assert len(srv.posts()) == 5
    assert {r.key("e"): r for r in reqs(5)}.keys() == got.keys() | again.keys()


class CrashAfter(Client):
    """A client that dies (as a killed process would) on its n-th request."""

    def __init__(self, base_url: str, n: int) -> None:
        super().__init__(base_url, "k", POLICY)
        self.n = n

    def ask(self, req: Request):
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt
        return super().ask(req)


def test_a_run_interrupted_by_a_crash_resumes_without_repeating_finished_requests(tmp_path):
    path = tmp_path / "cache" / "requests.jsonl"
    with fake_server.serve() as srv:
        with pytest.raises(KeyboardInterrupt), RequestCache(path) as cache:
            ask_all(reqs(6), cache, "e", lambda: CrashAfter(srv.base_url, 4), 1, AskStats())
        with path.open("a") as f:  # the crash also tore the line being written
            f.write('{"key": "abc", "respo')
        with RequestCache(path) as cache:
            n_cached = len(cache)
            assert n_cached >= 3 and cache.n_damaged == 1  # the three answers before the crash
            cached = {k for k in (r.key("e") for r in reqs(6)) if cache.get(k)}
            n_before, stats = len(srv.posts()), AskStats()
            got = ask_all(reqs(6), cache, "e", lambda: client(srv.base_url)[0], 1, stats)
        assert stats.from_cache == n_cached and stats.requests == 6 - n_cached and len(got) == 6
    asked_again = {p.body["prompt"] for p in srv.posts()[n_before:]}
    assert asked_again == {r.prompt for r in reqs(6) if r.key("e") not in cached}  # only the missing ones
    assert len(path.read_text().splitlines()) == 6  # the torn line is gone


def test_a_closed_client_stops_retrying():
    c, _ = client(f"http://127.0.0.1:{free_port()}/v1", max_retries=5)
    c._sleep = lambda s: c.close()  # closed while it waits for its first retry
    assert failure(c).reason == "cancelled" and c.stats.requests == 1


def test_failed_requests_are_counted_and_left_out(tmp_path):
    with fake_server.serve() as srv:
        srv.inject(status(500), status(500), status(500))  # the first request, three times
        with RequestCache(tmp_path / "r.jsonl") as cache:
            stats = AskStats()
            got = ask_all(reqs(3), cache, "e", lambda: client(srv.base_url)[0], 1, stats)
    assert len(got) == 2 and stats.failed == {"http_5xx": 1} and stats.retries == 2
    assert stats.requests == 5 and len(cache) == 2


def test_an_endpoint_error_stops_the_pool(tmp_path):
    with fake_server.serve() as srv:
        srv.inject(*[status(401)] * 20)
        with RequestCache(tmp_path / "r.jsonl") as cache, pytest.raises(EndpointError):
            ask_all(reqs(20), cache, "e", lambda: client(srv.base_url)[0], 2, AskStats())
    assert len(srv.posts()) < 20  # pending requests were cancelled


def test_a_bug_in_a_worker_fails_the_run(tmp_path):
    class Broken(Client):
        def ask(self, req: Request):
            raise ZeroDivisionError("bug")

    with RequestCache(tmp_path / "r.jsonl") as cache, pytest.raises(ZeroDivisionError):
        ask_all(reqs(3), cache, "e", lambda: Broken("http://127.0.0.1:9/v1", "k", POLICY), 2, AskStats())


def test_concurrency_is_bounded(tmp_path):
    with fake_server.serve(delay_s=0.3) as srv:
        with RequestCache(tmp_path / "r.jsonl") as cache:
            got = ask_all(reqs(12), cache, "e", lambda: client(srv.base_url)[0], 3, AskStats())
    assert len(got) == 12 and 2 <= srv.max_in_flight <= 3


def test_each_answer_is_cached_as_it_arrives_not_at_the_end_of_the_batch(tmp_path):
    """A SIGKILL leaves no time to save the batch's answers: each must be on disk at once."""
    import threading

    release, answered = threading.Event(), []

    def reply(body):
        if len(answered) == 2:
            release.wait(20)  # the third answer is held back
        answered.append(1)
        return fake_server.default_reply(body)

    path = tmp_path / "r.jsonl"
    with fake_server.serve(reply=reply) as srv, RequestCache(path) as cache:
        args = (reqs(3), cache, "e", lambda: client(srv.base_url)[0], 1, AskStats())
        worker = threading.Thread(target=ask_all, args=args)
        worker.start()
        deadline = time.monotonic() + 20
        while len(srv.posts()) < 3 or len(path.read_text().splitlines()) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert len(path.read_text().splitlines()) == 2  # while the third is still waited for
        release.set()
        worker.join()
    assert len(path.read_text().splitlines()) == 3


def test_replicas_share_the_requests_in_flight(tmp_path):
    reqs = [dataclasses.replace(COMPLETION, seed=s) for s in range(6)]
    with fake_server.serve(delay_s=0.2) as a, fake_server.serve(delay_s=0.2) as b:
        c = Client(a.base_url, "sk-a", POLICY, replicas=[(b.base_url, "sk-b")])
        with RequestCache(tmp_path / "cache.jsonl") as cache:
            got = ask_all(reqs, cache, "e", lambda: c, 2, AskStats())
    assert len(got) == 6
    # two in flight, two servers: each worker keeps the server it freed (3 and 3, give or take timing)
    assert len(a.posts()) + len(b.posts()) == 6 and min(len(a.posts()), len(b.posts())) >= 2
