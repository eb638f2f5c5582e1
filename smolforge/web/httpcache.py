"""An on-disk HTTP cache: per URL, its validators (ETag / Last-Modified) and body.

A rerun sends conditional requests (If-None-Match / If-Modified-Since) and a `304 Not
Modified` answer reuses the stored body, so unchanged pages are not downloaded again.
Only complete `200` answers that carry a validator are stored. Layout, per key:
`<folder>/<sha1 of key>.body` (the raw bytes) and `.json` (url, validators, content
type, body sha1). An entry whose body is missing or does not match is a miss.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from smolforge.core.io import atomic_file


@dataclass(frozen=True)
class Entry:
    """What a conditional request needs, and what a 304 answer gives back."""

    url: str
    etag: str | None
    last_modified: str | None
    content_type: str
    body_sha1: str

    def conditional_headers(self) -> dict[str, str]:
        """Request headers that let the server answer 304 if nothing changed."""
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers


class HttpCache:
    """A folder of cached responses; created on the first store, never cleaned by itself."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)

    def _paths(self, key: str) -> tuple[Path, Path]:
        stem = hashlib.sha1(key.encode("utf-8")).hexdigest()
        return self.folder / f"{stem}.json", self.folder / f"{stem}.body"

    def get(self, key: str) -> Entry | None:
        """The entry stored under `key`, or None (also for a damaged entry)."""
        meta_path, body_path = self._paths(key)
        try:
            entry = Entry(**json.loads(meta_path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None
        return entry if entry.url == key and body_path.is_file() else None

    def body(self, key: str, entry: Entry) -> bytes | None:
        """The stored body of `entry`, or None if it is missing or damaged."""
        try:
            data = self._paths(key)[1].read_bytes()
        except OSError:
            return None
        return data if hashlib.sha1(data).hexdigest() == entry.body_sha1 else None

    def put(
        self, key: str, etag: str | None, last_modified: str | None, content_type: str, body: bytes
    ) -> None:
        """Store a 200 answer; the body is written before the metadata that points to it."""
        if not (etag or last_modified):
            return  # nothing to revalidate with: a rerun must fetch it anyway
        meta_path, body_path = self._paths(key)
        with atomic_file(body_path, "wb") as f:
            f.write(body)
        entry = Entry(key, etag, last_modified, content_type, hashlib.sha1(body).hexdigest())
        with atomic_file(meta_path) as f:
            json.dump(asdict(entry), f, sort_keys=True)
