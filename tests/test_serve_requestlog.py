"""The request log: whole lines from several threads, rotation, a torn last line, a writer killed mid-stream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from lvmkit.errors import ArtifactError
from lvmkit.serve.requestlog import LogStats, RequestLog, log_files, read_log


def test_records_round_trip_from_threads(tmp_path):
    log = RequestLog(tmp_path / "log")

    def worker(t):
        for i in range(50):
            log.answer(
                "/v1/next", {"context": [f"t{t} é {i}"], "k": 3}, {"run": "a", "request_id": f"{t}-{i}"}
            )

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.shadow("/v1/next", "0-0", "b", 1.23456, [{"chunk_id": 3, "score": 0.5}])
    log.close()
    stats = LogStats()
    rows = list(read_log(tmp_path / "log", stats))
    assert stats.records == 201 and stats.torn == [] and stats.files == 1
    answers = [r for r in rows if r["kind"] == "answer"]
    assert sorted(r["response"]["request_id"] for r in answers) == sorted(
        f"{t}-{i}" for t in range(4) for i in range(50)
    )
    assert all(set(r) == {"v", "time", "kind", "endpoint", "request", "response"} for r in answers)
    shadow = rows[-1]
    assert (shadow["kind"], shadow["run"], shadow["latency_ms"]) == ("shadow", "b", 1.235)
    assert oct(os.stat(log_files(tmp_path / "log")[0]).st_mode & 0o777) == "0o600"


def test_rotation_keeps_order_and_whole_lines(tmp_path):
    with RequestLog(tmp_path, max_bytes=600) as log:
        for i in range(40):
            log.answer("/v1/search", {"text": "x" * 50, "k": 1}, {"i": i})
    files = log_files(tmp_path)
    assert len(files) > 5
    assert all(f.stat().st_size <= 600 for f in files)
    assert [r["response"]["i"] for r in read_log(tmp_path)] == list(range(40))


def test_reader_skips_a_torn_last_line_and_says_so(tmp_path):
    with RequestLog(tmp_path) as log:
        for i in range(3):
            log.answer("/v1/next", {"k": i}, {"run": "a"})
        path = log.path
    data = path.read_bytes()
    path.write_bytes(data + data.splitlines(keepends=True)[0][:25])  # a crash in the middle of a 4th line
    stats = LogStats()
    assert [r["request"]["k"] for r in read_log(path, stats)] == [0, 1, 2]
    assert stats.torn == [f"{path.name}:4"]
    assert "1 torn line(s) skipped" in stats.summary()


def test_missing_or_empty_log_is_a_clear_error(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        list(read_log(tmp_path / "nope"))
    with pytest.raises(ArtifactError, match="no request log"):
        list(read_log(tmp_path))


WRITER = """
import sys
from lvmkit.serve.requestlog import RequestLog
log = RequestLog(sys.argv[1], max_bytes=20_000)
i = 0
while True:
    log.answer("/v1/next", {"context": ["word " * (i % 300)], "k": 10}, {"run": "a", "i": i})
    i += 1
"""


def test_a_killed_writer_leaves_only_whole_records(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)])
    try:
        while sum(f.stat().st_size for f in tmp_path.glob("*.jsonl")) < 200_000:  # several rotations
            assert proc.poll() is None, "the writer died on its own"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    stats = LogStats()
    seen = [r["response"]["i"] for r in read_log(tmp_path, stats)]
    assert stats.torn == []
    assert seen == list(range(len(seen)))  # nothing lost or duplicated before the kill, in order
    for f in tmp_path.glob("*.jsonl"):
        assert f.read_bytes().endswith(b"\n")
        for line in f.read_text().splitlines():
            json.loads(line)
