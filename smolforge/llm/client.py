"""One client for any OpenAI-compatible server, with bounded retries, a request cache
and a bounded thread pool.

`Client.ask` sends one chat or plain-completion request through the `openai` package
(its own retries off) and retries connection errors, timeouts, 429, 5xx and malformed
answers itself: at most `max_retries` more attempts, waiting an exponential backoff
(capped) or the server's Retry-After (one above `max_wait_s` fails the request at once).
A request that still fails raises `RequestFailed` with a short `reason` (a metrics key);
an answer that concerns every request (401, 403, 404: wrong key, URL or model) raises
`EndpointError` at once and closes the client, so no other worker sends another request
to that endpoint. `ask_all` answers a list of requests from a `RequestCache`
(smolforge.llm.cache) and asks the server only for the rest, `concurrency` at a time.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import openai

from smolforge.core.log import progress
from smolforge.core.retry import GaveUp, Transient, next_wait, parse_retry_after
from smolforge.llm.cache import RequestCache, Response

log = logging.getLogger(__name__)

# Metrics keys of requests that failed after their retries, always reported (zeros too).
FAIL_REASONS = (
    "timeout",  # no answer within timeout_s
    "connection",  # refused, reset, dropped
    "http_429",  # still rate-limited after the retries
    "http_5xx",
    "http_4xx",  # a request the server will never accept (e.g. too long); not retried
    "bad_response",  # not JSON, or no choices in it
    "retry_after_too_long",  # the server asked to wait longer than max_wait_s
)
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
# the HTTP library under the openai client: httpx for openai 1.x, its fork httpx2 later
httpx = importlib.import_module(openai.DefaultHttpxClient.__mro__[1].__module__.partition(".")[0])
# An honest answer of max_tokens tokens is kilobytes; a body past this is a broken or
# hostile server, and reading on would only fill memory.
MAX_ANSWER_BYTES = 16 << 20


@dataclass(frozen=True)
class Sampling:
    """Sampling settings sent with a request (values come from params.yaml)."""

    temperature: float
    top_p: float
    max_tokens: int  # completion tokens at most
    stop: list[str]  # the server stops before any of these


@dataclass(frozen=True)
class Request:
    """One request: a plain completion (`prompt`) or a chat (`messages`, (role, content) pairs)."""

    model: str
    sampling: Sampling
    seed: int
    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None

    @property
    def kind(self) -> Literal["completion", "chat"]:
        return "chat" if self.messages is not None else "completion"

    def key(self, endpoint: str) -> str:
        """sha256 of everything that determines the answer; `endpoint` names the server, never a key."""
        s = self.sampling
        what = {
            "endpoint": endpoint,
            "model": self.model,
            "kind": self.kind,
            "prompt": self.prompt,
            "messages": [list(m) for m in self.messages] if self.messages is not None else None,
            "sampling": [s.temperature, s.top_p, s.max_tokens, list(s.stop)],
            "seed": self.seed,
        }
        return hashlib.sha256(json.dumps(what, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds on one request (values come from params.yaml, section synthesize)."""

    timeout_s: float  # per attempt: connecting, waiting for the headers, then the whole body
    max_retries: int  # more attempts after a transient failure
    backoff_s: float  # wait before the first retry; doubles each time
    backoff_max_s: float
    max_wait_s: float  # longest Retry-After accepted


class RequestFailed(Exception):
    """A request that failed after its retries; `reason` is a metrics key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class EndpointError(Exception):
    """An answer that no retry or other request can change (wrong key, URL or model)."""


@dataclass
class AskStats:
    """What asking cost; varies with the cache and the server, so it is not a stage output."""

    requests: int = 0  # sent to the server, retries included
    from_cache: int = 0
    retries: int = 0
    failed: Counter = field(default_factory=Counter)  # reason -> requests given up on
    tokens_in: int = 0  # prompt tokens of the answers received this run
    tokens_out: int = 0  # completion tokens of the answers received this run
    seconds: float = 0.0  # wall time spent asking the server (waits included)
    waited_s: float = 0.0  # backoff and Retry-After


class Client:
    """An `openai.OpenAI` client for `base_url`; retries are counted in `stats`.

    `replicas` are more (base_url, api_key) pairs serving the same model (the embedded
    server started several times); each attempt goes to the server with the fewest
    requests in flight, the first on a tie. `close()` also makes requests still running
    give up at their next retry, so a stage that stops (Ctrl-C, an error) is not held up
    by backoff waits.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        policy: RetryPolicy,
        sleep: Callable[[float], object] | None = None,
        replicas: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.policy, self.stats = policy, AskStats()
        self._closed = threading.Event()
        self._sleep = sleep or self._closed.wait  # tests record the waits instead
        self._lock = threading.Lock()
        self._servers = [_openai_client(u, k, policy) for u, k in [(base_url, api_key), *replicas]]
        self._in_flight = [0] * len(self._servers)
        self.base_url = base_url
        self._key = api_key  # only to blank it out of what the server says back

    def close(self) -> None:
        self._closed.set()
        for server in self._servers:
            server.close()

    def ask(self, req: Request) -> Response:
        """The server's answer to `req`; raises RequestFailed or EndpointError."""
        p = self.policy
        for attempt in range(p.max_retries + 1):
            if self._closed.is_set():
                raise RequestFailed("cancelled", "the client was closed")
            try:
                return self._once(req)
            except Transient as e:
                try:
                    wait_s = next_wait(e, attempt, p)
                except GaveUp as g:
                    raise RequestFailed(g.reason, g.detail) from None
                log.info("%s; retry %d/%d in %.1f s", e.detail, attempt + 1, p.max_retries, wait_s)
                with self._lock:
                    self.stats.retries += 1
                    self.stats.waited_s += wait_s
                if wait_s > 0:
                    self._sleep(wait_s)
        raise AssertionError("unreachable: the loop returns or raises")

    def _once(self, req: Request) -> Response:
        s = req.sampling
        kw: dict[str, Any] = dict(
            model=req.model, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=req.seed
        )
        if s.stop:
            kw["stop"] = list(s.stop)
        with self._lock:
            self.stats.requests += 1
            i = min(range(len(self._servers)), key=self._in_flight.__getitem__)
            self._in_flight[i] += 1
        server = self._servers[i]
        try:
            if req.messages is not None:
                msgs = [{"role": r, "content": c} for r, c in req.messages]
                out = server.chat.completions.create(messages=msgs, **kw)
            else:
                out = server.completions.create(prompt=req.prompt, **kw)
            return _response(out, chat=req.messages is not None)
        except openai.APIStatusError as e:
            err = _status_error(e, self.base_url, self._key)
            if isinstance(err, EndpointError):  # the endpoint refuses every request: send no more
                self._closed.set()
            raise err from None
        except openai.APITimeoutError:
            raise Transient("timeout", f"no answer within timeout_s {self.policy.timeout_s:g}") from None
        except openai.APIConnectionError as e:
            if isinstance(e.__cause__, AnswerTooLarge):
                raise Transient("bad_response", str(e.__cause__)) from None
            raise Transient("connection", f"{type(e.__cause__ or e).__name__}: {self.base_url}") from None
        except (openai.APIResponseValidationError, ValueError, TypeError, AttributeError) as e:
            raise Transient("bad_response", f"malformed answer ({type(e).__name__})") from None
        finally:
            with self._lock:
                self._in_flight[i] -= 1


def _openai_client(base_url: str, api_key: str, policy: RetryPolicy) -> openai.OpenAI:
    # proxies from the environment never apply to a server on this machine
    local = urlsplit(base_url).hostname in _LOOPBACK
    http_client = openai.DefaultHttpxClient(
        trust_env=not local, event_hooks={"response": [functools.partial(_bound_body, policy.timeout_s)]}
    )
    return openai.OpenAI(
        base_url=base_url, api_key=api_key, max_retries=0, timeout=policy.timeout_s, http_client=http_client
    )


class AnswerTooLarge(httpx.DecodingError):
    """A response body past MAX_ANSWER_BYTES (counted as a bad response)."""


class _BoundedBody(httpx.SyncByteStream):
    """A response body that must end by `deadline` and stay under MAX_ANSWER_BYTES.

    httpx's timeouts bound each read, not the whole body: a server that trickles a byte
    a second, or streams without end, would otherwise hold a request (and the stage)
    for as long as it likes.
    """

    def __init__(self, inner: httpx.SyncByteStream, deadline: float, request: httpx.Request) -> None:
        self.inner, self.deadline, self.request = inner, deadline, request

    def __iter__(self):
        n = 0
        for chunk in self.inner:
            n += len(chunk)
            if n > MAX_ANSWER_BYTES:
                raise AnswerTooLarge(f"answer larger than {MAX_ANSWER_BYTES:,} bytes", request=self.request)
            if time.monotonic() > self.deadline:
                raise httpx.ReadTimeout("answer slower than timeout_s", request=self.request)
            yield chunk

    def close(self) -> None:
        self.inner.close()


def _bound_body(timeout_s: float, response: httpx.Response) -> None:
    """httpx response hook (runs before the body is read): bound the body's time and size."""
    response.stream = _BoundedBody(response.stream, time.monotonic() + timeout_s, response.request)


def _response(out: Any, chat: bool) -> Response:
    """The text, finish reason and token counts of an answer; ValueError if it has none."""
    if isinstance(out, (str, bytes)) or not getattr(out, "choices", None):
        raise ValueError("no choices")
    choice = out.choices[0]
    text = (choice.message.content if chat else choice.text) or ""  # empty content is an answer
    if not isinstance(text, str):
        raise ValueError("content is not text")
    usage = getattr(out, "usage", None)
    return Response(
        text=text,
        finish_reason=str(choice.finish_reason or ""),
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
    )


def _status_error(e: openai.APIStatusError, base_url: str, key: str) -> Exception:
    code = e.status_code
    if code in (401, 403):
        return EndpointError(f"HTTP {code} from {base_url}: the server refused the API key")
    if code == 404:
        return EndpointError(f"HTTP 404 from {base_url}: wrong base_url, or the server has no such model")
    if code == 429 or code >= 500:
        reason = "http_429" if code == 429 else "http_5xx"
        return Transient(reason, f"HTTP {code}", _retry_after(e.response.headers))
    # the server's own words, which some servers and proxies write the key into
    message = str(e.message).replace(key, "***") if key else str(e.message)
    return RequestFailed("http_4xx", f"HTTP {code}: {message[:200]}")


def _retry_after(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` (delta-seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    try:
        if ms is not None:
            return max(0.0, float(ms) / 1000)
    except ValueError:
        pass
    return parse_retry_after(headers.get("retry-after"))


def ask_all(
    requests: Sequence[Request],
    cache: RequestCache,
    endpoint: str,
    connect: Callable[[], Client],
    concurrency: int,
    stats: AskStats,
    desc: str = "synthesize",
) -> dict[str, Response]:
    """Answers by cache key: from `cache` where it has them, else from the server.

    `connect()` is called only when something is missing (so a fully cached rerun never
    starts a server). Each answer is appended to the cache as it arrives, so a killed
    process loses only the requests in flight; an exception (Ctrl-C, an EndpointError,
    a bug in a worker) cancels what has not started, keeps the answers that arrived,
    and is raised without waiting for the requests in flight. Requests that fail after
    their retries are counted in `stats.failed`.
    """
    answers: dict[str, Response] = {}
    todo: dict[str, Request] = {}
    for req in requests:
        key = req.key(endpoint)
        if key in answers or key in todo:
            continue
        hit = cache.get(key)
        if hit is not None:
            answers[key] = hit
            stats.from_cache += 1
        else:
            todo[key] = req
    if not todo:
        return answers
    client = connect()
    t0, retries0, requests0 = time.monotonic(), client.stats.retries, client.stats.requests
    waited0 = client.stats.waited_s
    bar = progress(total=len(todo), desc=desc, unit="req")

    recorded: set[Future] = set()

    def record(key: str, fut: Future) -> None:
        recorded.add(fut)
        try:
            resp, seconds = fut.result()  # a bug or an EndpointError propagates from here
        except RequestFailed as e:
            log.warning("request failed: %s", e)
            stats.failed[e.reason] += 1
        else:
            cache.put(key, resp, seconds)
            answers[key] = resp
            stats.tokens_in += resp.prompt_tokens
            stats.tokens_out += resp.completion_tokens
        bar.update(1)

    pool = ThreadPoolExecutor(max_workers=concurrency)
    futures = {pool.submit(_timed, client, req): key for key, req in todo.items()}
    try:
        pending: set[Future] = set(futures)
        while pending:
            # each answer goes to the cache as soon as it arrives: SIGKILL gives no chance
            # to save what finished earlier in the batch (the except below does for Ctrl-C)
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                record(futures[fut], fut)
    except BaseException:
        # stop at once (the caller closes the client and stops the server, which ends the
        # requests in flight), keeping the answers that arrived
        pool.shutdown(wait=False, cancel_futures=True)
        for fut in futures:
            if fut not in recorded and fut.done() and not fut.cancelled() and fut.exception() is None:
                record(futures[fut], fut)
        raise
    finally:
        pool.shutdown(wait=False)
        bar.close()
        stats.requests += client.stats.requests - requests0
        stats.retries += client.stats.retries - retries0
        stats.waited_s += client.stats.waited_s - waited0
        stats.seconds += time.monotonic() - t0
    return answers


def _timed(client: Client, req: Request) -> tuple[Response, float]:
    t0 = time.monotonic()
    resp = client.ask(req)
    return resp, time.monotonic() - t0
