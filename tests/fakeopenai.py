"""A fake OpenAI-compatible server on 127.0.0.1 for synthesize tests, with injected faults.

`serve(reply)` runs a ThreadingHTTPServer on a free port in a thread and answers
`POST /v1/chat/completions`, `POST /v1/completions` and `GET /v1/models` in the shapes
the `openai` client parses. `reply(body)` gives the generated text (or (text,
finish_reason)) for a request body. `Fake.inject(*faults)` queues faults: each of the
next requests gets one instead of an answer (status codes with headers, silence, a
malformed body, a dropped connection). Every request is logged with its body and
headers, so tests can count attempts and see what was sent.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Reply = Callable[[dict], "str | tuple[str, str]"]
Fault = Callable[["_Handler", dict], None]


@dataclass
class Call:
    path: str
    body: dict | None
    headers: dict[str, str]


@dataclass
class Fake:
    base_url: str = ""  # http://127.0.0.1:PORT/v1
    calls: list[Call] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)  # ends slow faults early
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def inject(self, *faults: Fault) -> None:
        with self.lock:
            self.faults.extend(faults)

    def posts(self) -> list[Call]:
        return [c for c in self.calls if c.body is not None]


class _Handler(BaseHTTPRequestHandler):
    fake: Fake
    reply: Reply
    delay_s: float = 0.0

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass

    def send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        self.fake.calls.append(Call(self.path, None, dict(self.headers.items())))
        self.send(200, json.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]}).encode())

    def do_POST(self) -> None:  # noqa: N802
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.loads(raw)
        fake = self.fake
        with fake.lock:
            fake.calls.append(Call(self.path, body, dict(self.headers.items())))
            fault = fake.faults.pop(0) if fake.faults else None
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                if fault is not None:
                    fault(self, body)
                else:
                    if self.delay_s:
                        fake.stop.wait(self.delay_s)
                    self.answer(body)
        finally:
            with fake.lock:
                fake.in_flight -= 1

    def answer(self, body: dict, text: str | None = None) -> None:
        out = type(self).reply(body) if text is None else text
        text, finish = out if isinstance(out, tuple) else (out, "stop")
        chat = self.path.endswith("/chat/completions")
        choice = {"index": 0, "finish_reason": finish}
        choice |= (
            {"message": {"role": "assistant", "content": text}} if chat else {"text": text, "logprobs": None}
        )
        prompt = json.dumps(body.get("messages") or body.get("prompt"))
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        obj = "chat.completion" if chat else "text_completion"
        resp = {"id": "fake-1", "object": obj, "created": 0, "model": body.get("model"), "choices": [choice]}
        self.send(200, json.dumps(resp | {"usage": usage}).encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that gave up (timeouts) is expected here


@contextlib.contextmanager
def serve(reply: Reply | None = None, delay_s: float = 0.0) -> Iterator[Fake]:
    """Serve until the block ends; `delay_s` delays every answer (to see concurrency)."""
    fake = Fake()
    handler = type(
        "H", (_Handler,), {"fake": fake, "reply": staticmethod(reply or default_reply), "delay_s": delay_s}
    )
    httpd = _Server(("127.0.0.1", 0), handler)
    fake.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def default_reply(body: dict) -> str:
    """Well-formed answers for both tasks, derived from the request (so each differs)."""
    if "prompt" in body:  # a conversation: the word is the last quoted one in the prompt
        word = re.findall(r'"([^"]+)"', body["prompt"])[-1]
        return f" What is a {word}?\nTEACHER: A {word} is something people use every day.\n"
    user = body["messages"][-1]["content"]
    if "Question:" in user:
        question = user.rsplit("Question:", 1)[1].strip()
        return f'"I wrote about this because {question.lower().rstrip("?")} matters to me. It still does."'
    title = re.findall(r'"([^"]+)"', user)[0]
    return f"1. What is {title} about?\n2. Why did you write {title}?\n3. How long is {title}?"


# ---- faults


def status(code: int, headers: dict[str, str] | None = None) -> Fault:
    return lambda h, _: h.send(code, json.dumps({"error": {"message": f"status {code}"}}).encode(), headers)


def silence(seconds: float) -> Fault:
    """Say nothing for `seconds` (or until the server stops), then answer normally."""

    def fault(h: _Handler, body: dict) -> None:
        h.fake.stop.wait(seconds)
        h.answer(body)

    return fault


def malformed() -> Fault:
    return lambda h, _: h.send(200, b'{"id": "x", "choices": [{"index": 0, "message": ')


def body(obj: dict) -> Fault:
    """A 200 answer with this JSON body (e.g. no choices)."""
    return lambda h, _: h.send(200, json.dumps(obj).encode())


def empty() -> Fault:
    """A well-formed answer whose content is empty."""
    return lambda h, body: h.answer(body, text="")


def drop() -> Fault:
    def fault(h: _Handler, _: dict) -> None:
        h.close_connection = True

    return fault


def truncated() -> Fault:
    """A 200 whose body stops halfway through its Content-Length, then the connection closes."""

    def fault(h: _Handler, body: dict) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", "4000")
        h.end_headers()
        h.wfile.write(b'{"id": "x", "object": "chat.completion", "choices": [{"index": 0, "mess')
        h.close_connection = True

    return fault


def redirect_to_self(code: int = 307) -> Fault:
    """A redirect to the URL just asked for (a loop); 307 keeps the POST and its body."""
    return lambda h, _: h.send(code, b"", {"Location": h.path})


def charset(encoding: str, declared: str = "utf-8") -> Fault:
    """A well-formed answer (with non-ASCII text) encoded in `encoding` but declared `declared`."""

    def fault(h: _Handler, body: dict) -> None:
        text = "Un café naïve, déjà vu."
        resp = {"id": "x", "object": "chat.completion", "created": 0, "model": body.get("model"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}]}  # fmt: skip
        data = json.dumps(resp, ensure_ascii=False).encode(encoding)
        h.send_response(200)
        h.send_header("Content-Type", f"application/json; charset={declared}")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    return fault


def endless(chunk: int = 1 << 16, pause_s: float = 0.0) -> Fault:
    """A 200 whose body never ends (HTTP/1.0, no Content-Length: it runs until the connection
    closes): fast, a huge answer; with `pause_s` between chunks, a trickle."""

    def fault(h: _Handler, _: dict) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.end_headers()
        h.wfile.write(b'{"id": "x", "choices": [')
        while not h.fake.stop.is_set():
            h.wfile.write(b" " * chunk)
            h.wfile.flush()
            if pause_s:
                h.fake.stop.wait(pause_s)

    return fault
