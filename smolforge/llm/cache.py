"""A persisted cache of LLM answers: append-only JSONL, one finished request a line.

Each line is `{"key", "response": {"text", "finish_reason", "prompt_tokens",
"completion_tokens"}, "seconds"}`, where `key` is `smolforge.llm.client.Request.key`: a hash of
everything that determines the answer (endpoint, model, prompt or messages, sampling,
seed); never an API key. Lines are flushed and fsynced one by one, so a crash loses at
most the line being written; a torn last line is cut off when the cache is opened and
that request is simply asked again. A key written twice keeps its last answer.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Response:
    """What a server answered: the generated text, why it stopped, and token counts."""

    text: str
    finish_reason: str  # "stop", "length", ... ("" if the server did not say)
    prompt_tokens: int
    completion_tokens: int


class RequestCache:
    """The answers in `path`, loaded on open; `put` appends. Use as a context manager."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._answers: dict[str, Response] = {}
        self.n_damaged = 0  # lines skipped when loading (a torn tail included)
        self._load()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def __enter__(self) -> RequestCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._answers)

    def close(self) -> None:
        self._file.close()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a line cut short by a crash: drop it before appending after it
            log.warning("%s: dropping a torn last line (%d bytes)", self.path, len(data) - end)
            self.n_damaged += 1
            with self.path.open("r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
            data = data[:end]
        for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                self._answers[str(rec["key"])] = Response(**rec["response"])
            except (ValueError, KeyError, TypeError):
                log.warning("%s:%d: not a cache record; ignored", self.path, lineno)
                self.n_damaged += 1

    def get(self, key: str) -> Response | None:
        with self._lock:
            return self._answers.get(key)

    def put(self, key: str, response: Response, seconds: float) -> None:
        """Append one answer and fsync it before returning."""
        line = json.dumps(
            {"key": key, "response": asdict(response), "seconds": round(seconds, 3)},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._answers[key] = response
