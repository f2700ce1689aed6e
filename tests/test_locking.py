"""Directory locks: one writer per run and per bank. Holders are real processes (a child that holds the lock,
a real `lvmkit train` or ingest); a holder killed with SIGKILL leaves a stale lock that the next writer takes
over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from lvmkit.artifacts import read_jsonl
from lvmkit.cli.main import app
from lvmkit.locking import LOCK_FILE, Holder, LockedError, acquire, holder, lock_dir
from lvmkit.train.runs import RunPaths, read_status

runner = CliRunner()
HOST = socket.gethostname()

HOLD = """
import sys, time
from lvmkit.locking import acquire
lock = acquire(sys.argv[1], sys.argv[2], sys.argv[3])
print("locked", flush=True)
time.sleep(600)
"""


def hold_in_child(directory, purpose="ingest", what="bank"):
    """A child process that takes the lock, says so, and sleeps."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory), purpose, what], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def kill(proc):
    proc.kill()
    proc.wait(timeout=30)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def held_message(directory, what, h: Holder, hint=""):
    return (
        f"{what} {directory} is locked by pid {h.pid} on host {h.host} since {h.since} ({h.purpose}: "
        f"{h.command}). Only one process may write it at a time. {hint}Wait for that process to finish, or stop "
        f"it (kill {h.pid}) and run your command again."
    )


def test_second_writer_refused_naming_the_holder_then_stale_lock_taken_over(tmp_path):
    d = tmp_path / "bank"
    child = hold_in_child(d)
    try:
        h, state = holder(d)
        assert state == "held" and (h.pid, h.host, h.purpose) == (child.pid, HOST, "ingest")
        with pytest.raises(LockedError) as e:
            acquire(d, "index build", "bank")
        assert str(e.value) == held_message(d, "bank", h)
    finally:
        kill(child)  # SIGKILL: the lock file stays behind, naming a dead process
    h2, state = holder(d)
    assert state == "stale" and h2 == h
    with lock_dir(d, "index build", "bank") as lock:
        assert lock.took_over == h
        assert holder(d) == (lock.holder, "held")
        assert json.loads((d / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (d / LOCK_FILE).exists() and holder(d) == (None, "free")


def test_stale_lock_file_of_a_dead_pid_is_taken_over(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    stale = Holder(dead_pid(), HOST, "2026-01-01T00:00:00+00:00", "lvmkit train x", "training")
    (d / LOCK_FILE).write_text(json.dumps(stale.__dict__) + "\n")
    assert holder(d) == (stale, "stale")
    lock = acquire(d, "training", "run")
    assert lock.took_over == stale and holder(d) == (lock.holder, "held")
    lock.release()
    assert sorted(p.name for p in d.iterdir()) == []  # the directory existed before: it stays


def test_lock_written_on_another_host_is_refused_with_the_file_to_remove(tmp_path):
    d = tmp_path / "bank"
    d.mkdir()
    other = Holder(1234, "elsewhere", "2026-01-01T00:00:00+00:00", "lvmkit ingest c", "ingest")
    (d / LOCK_FILE).write_text(json.dumps(other.__dict__))
    assert holder(d) == (other, "unknown")
    with pytest.raises(LockedError) as e:
        acquire(d, "ingest", "bank")
    assert str(e.value) == (
        f"bank {d} has a lock written on another host: pid 1234 on host elsewhere since "
        f"2026-01-01T00:00:00+00:00 (ingest: lvmkit ingest c). lvmkit cannot check from {HOST} whether that "
        f"process still runs. If it does not, remove {d / LOCK_FILE} and run your command again."
    )


def test_a_directory_made_only_for_the_lock_is_removed_with_it(tmp_path):
    d = tmp_path / "new" / "run"
    acquire(d, "training", "run").release()
    assert not d.exists() and (tmp_path / "new").exists()
    # the same process cannot take it twice either
    with pytest.raises(LockedError), lock_dir(d, "training"), lock_dir(d, "training"):
        pass


# ---------------------------------------------------------------------------------------------- banks
INGEST_THEN_WAIT = """
import sys, time
from lvmkit.bank.ingest import ingest
def progress(stage, done, total):
    if stage == "encode" and done:
        print("encoding", flush=True)
        time.sleep(600)
ingest(sys.argv[1], sys.argv[2], format="jsonl", encoder="hash:16", backend="hash", shard_size=4,
       progress=progress)
"""


@pytest.mark.slow
def test_two_ingests_into_one_bank(tmp_path):
    corpus = tmp_path / "c.jsonl"
    with open(corpus, "w") as fh:
        for i in range(6):
            text = " ".join(f"Sentence {j} of article {i} is here." for j in range(5))
            fh.write(json.dumps({"id": str(i), "title": f"A{i}", "text": text}) + "\n")
    out = tmp_path / "bank"
    child = subprocess.Popen(
        [sys.executable, "-c", INGEST_THEN_WAIT, str(corpus), str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "encoding"  # mid-ingest, holding the bank's lock
        h, state = holder(out)
        assert state == "held" and h.pid == child.pid and h.purpose == "ingest"
        args = ["ingest", str(corpus), "--out", str(out), "--encoder", "hash:16", "--backend", "hash"]
        res = runner.invoke(app, [*args, "--shard-size", "4"], env={"COLUMNS": "400"})
        assert res.exit_code == 2
        assert " ".join(res.output.split()) == "error: " + held_message(out, "bank", h)
        res = runner.invoke(app, ["index", "build", str(out)])
        assert res.exit_code == 2 and "no manifest.json" in res.output  # not a bank yet: refused before
    finally:
        kill(child)
    res = runner.invoke(app, [*args, "--shard-size", "4"])  # the stale lock is taken over; the ingest resumes
    assert res.exit_code == 0, res.output
    assert "bank written" in res.output and not (out / LOCK_FILE).exists()


# ----------------------------------------------------------------------------------------------- runs
def train_args(out, bank):
    sets = [
        f"bank={bank.path}",
        "data.ctx=3",
        "data.batch_size=8",
        "data.max_eval_queries=50",
        "model.kwargs={hidden: 16, layers: 1}",
        "optim.epochs=2",
        "checkpoint_every_steps=2",
        "log_every_steps=1",
        "final_eval=false",
    ]
    return ["train", "--out", str(out), "--quiet", *[f"--set={s}" for s in sets]]


@pytest.mark.slow
def test_two_writers_on_one_run_and_resume_against_a_live_run(make_bank, tmp_path):
    from test_train import dynamic_bank

    bank = dynamic_bank(make_bank, tmp_path, n_articles=30)
    out = tmp_path / "run"
    run = RunPaths(out)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LVMKIT_THROTTLE_S": "0.3"}
    child = subprocess.Popen(
        [sys.executable, "-m", "lvmkit.cli.main", *train_args(out, bank)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline and child.poll() is None:
            if run.status.exists() and read_jsonl(run.history):
                break
            time.sleep(0.05)
        assert child.poll() is None, child.stderr.read().decode()
        h, state = holder(out)
        assert state == "held" and h.pid == child.pid and h.purpose == "training"
        hint = f"Follow it with `lvmkit runs status {out}`. "
        expected = "error: " + held_message(out, "run", h, hint)
        for extra in (["--resume"], [], ["--resume", "--detach"]):  # resume, a fresh start, a detached resume
            res = runner.invoke(app, [*train_args(out, bank), *extra], env={"COLUMNS": "400"})
            assert res.exit_code == 2, (extra, res.output)
            assert " ".join(res.output.split()) == expected, extra
        assert not run.stdout.exists()  # the detached resume was refused before it started anything
        assert read_status(run)["state"] == "running" and read_status(run)["pid"] == child.pid
        res = runner.invoke(app, ["runs", "status", str(out)], env={"COLUMNS": "400"})
        assert res.exit_code == 0 and f"held by pid {child.pid} on host {HOST}" in res.output, res.output
        res = runner.invoke(app, ["runs", "list", str(tmp_path)], env={"COLUMNS": "400"})
        assert f"pid {child.pid}@{HOST}" in res.output, res.output
    finally:
        kill(child)
    res = runner.invoke(app, ["runs", "status", str(out)], env={"COLUMNS": "400"})
    assert f"stale (pid {child.pid} is gone" in res.output, res.output
    res = runner.invoke(app, [*train_args(out, bank), "--resume"])  # takes the stale lock over
    assert res.exit_code == 0, res.output
    steps = [r["step"] for r in read_jsonl(run.history) if r["kind"] == "step"]
    assert steps == list(range(1, len(steps) + 1))  # every step once: no second writer added rows
    assert [r["epoch"] for r in read_jsonl(run.history) if r["kind"] == "epoch"] == [1, 2]
    assert not (out / LOCK_FILE).exists() and read_status(run)["state"] == "finished"


def test_without_flock_the_pid_in_the_lock_file_decides(tmp_path, monkeypatch):
    """Some NFS / Lustre mounts refuse flock (ENOLCK): a live holder still refuses, a dead one is taken over."""
    import errno
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    d = tmp_path / "bank"
    child = hold_in_child(d)  # holds it with flock, and its pid is in the file
    monkeypatch.setattr(fcntl, "flock", no_flock)
    try:
        h, _ = holder(d)
        with pytest.raises(LockedError) as e:
            acquire(d, "ingest", "bank")
        assert str(e.value) == held_message(d, "bank", h)
    finally:
        kill(child)
    with lock_dir(d, "ingest", "bank") as lock:
        assert lock.took_over == h
