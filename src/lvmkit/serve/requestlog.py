"""The opt-in request log (``lvmkit serve --log-requests DIR``) and its reader (``lvmkit replay``).

What a record holds, and nothing else: what the server was sent and what it answered::

    {"v": 1, "kind": "answer", "time": "2026-12-03T09:01:02Z", "endpoint": "/v1/next",
     "request": {...the request body as validated...}, "response": {...the response body...}}

plus, for shadow runs (computed for the request, never returned), one record each::

    {"v": 1, "kind": "shadow", "time": ..., "endpoint": "/v1/next", "request_id": ..., "run": "gru",
     "latency_ms": 0.4, "predicted": [{"chunk_id": 17, "score": 0.81}, ...]}

No client address, header or token is ever written.

Files: ``DIR/requests-<UTC time>-<pid>.jsonl``; a new file when one passes ``max_bytes``. Each record is one
line written with a single ``os.write`` on a file opened with O_APPEND, under a lock, so records never
interleave and a killed server leaves whole lines behind (the page cache keeps what ``write`` returned from;
``fsync`` runs on rotation and close, so only a machine crash can lose the last records). A reader still
skips a torn last line (a crash mid-write, a disk that filled up) and counts it, rather than failing.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvmkit.errors import ArtifactError

LOG_VERSION = 1
FILE_GLOB = "requests-*.jsonl"
DEFAULT_MAX_BYTES = 64 << 20


class RequestLog:
    """Appends one JSON line per record; thread-safe; rotates at ``max_bytes``."""

    def __init__(self, directory: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        self._serial = 0
        self.path: Path | None = None
        self.records = 0

    def answer(self, endpoint: str, request: dict[str, Any], response: dict[str, Any]) -> None:
        """Log what the server was sent on ``endpoint`` and what it answered."""
        self._write({"kind": "answer", "endpoint": endpoint, "request": request, "response": response})

    def shadow(
        self, endpoint: str, request_id: str, run: str, latency_ms: float, predicted: list[dict[str, Any]]
    ) -> None:
        """Log a shadow run's answer to a request (computed, not returned): ranked chunk ids and scores."""
        self._write(
            {
                "kind": "shadow",
                "endpoint": endpoint,
                "request_id": request_id,
                "run": run,
                "latency_ms": round(float(latency_ms), 3),
                "predicted": predicted,
            }
        )

    def _write(self, record: dict[str, Any]) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        line = (json.dumps({"v": LOG_VERSION, "time": stamp, **record}, ensure_ascii=False) + "\n").encode()
        with self._lock:
            if self._fd is None or self._size + len(line) > self.max_bytes and self._size > 0:
                self._rotate()
            assert self._fd is not None
            view = memoryview(line)
            while view:  # os.write may write less than asked (rare for regular files); finish the line
                view = view[os.write(self._fd, view) :]
            self._size += len(line)
            self.records += 1

    def _rotate(self) -> None:
        self._close_fd()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self._serial += 1
        self.path = self.dir / f"requests-{stamp}-{os.getpid()}-{self._serial:06d}.jsonl"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        with self._lock:
            self._close_fd()

    def __enter__(self) -> RequestLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------ reading
@dataclass
class LogStats:
    files: int = 0
    records: int = 0
    torn: list[str] = field(default_factory=list)  # "file:line" of lines that are not whole JSON records

    def summary(self) -> str:
        torn = f", {len(self.torn)} torn line(s) skipped ({', '.join(self.torn[:3])})" if self.torn else ""
        return f"{self.records:,} records from {self.files} file(s){torn}"


def log_files(path: str | os.PathLike) -> list[Path]:
    """A log file, or every ``requests-*.jsonl`` in a log directory (in name order = time order)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(path.glob(FILE_GLOB))
        if not files:
            raise ArtifactError(
                f"{path} holds no request log ({FILE_GLOB}); start `lvmkit serve --log-requests {path}`"
            )
        return files
    raise ArtifactError(f"request log {path} does not exist (a file or a directory made by --log-requests)")


def read_log(path: str | os.PathLike, stats: LogStats | None = None) -> Iterator[dict[str, Any]]:
    """Every whole record of a log file or directory, in order. Lines that are not a whole JSON object (a torn
    last line) are skipped and named in ``stats.torn``."""
    stats = stats if stats is not None else LogStats()
    for f in log_files(path):
        stats.files += 1
        with open(f, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                record = _parse(raw)
                if record is None:
                    if raw.strip():
                        stats.torn.append(f"{f.name}:{lineno}")
                    continue
                stats.records += 1
                yield record


def _parse(raw: bytes) -> dict[str, Any] | None:
    if not raw.endswith(b"\n"):
        return None  # the writer always ends a record with a newline: this one was cut short
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and "kind" in record else None
