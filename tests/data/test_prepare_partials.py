"""A killed ``data prepare`` leaves no ``.partial-*`` behind for good: the next run of the same --out cleans it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emaprobe.cli import main
from emaprobe.data import TokenData
from emaprobe.data.prepare import OWNER, STALE_AFTER_S, clean_stale_partials

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _leftover(parent: Path, name: str, owner: str | None, age_s: float = 0.0) -> Path:
    folder = parent / name
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "tokens_00000.bin").write_bytes(b"\0" * 4096)
    if owner is not None:
        (folder / OWNER).write_text(owner)
    if age_s:
        old = time.time() - age_s
        os.utime(folder, (old, old))
    return folder


def _corpus(tmp_path: Path) -> Path:
    text = tmp_path / "corpus.txt"
    text.write_text("the cat sat on the mat\n\nthe dog ran\n" * 20, encoding="utf-8")
    return text


def test_prepare_removes_stale_partials_of_its_out_and_says_so(tmp_path, capsys):
    import socket

    host = socket.gethostname()
    dead = _leftover(tmp_path, ".corpus.partial-dead", f"{host} {_dead_pid()}")
    ownerless = _leftover(tmp_path, ".corpus.partial-old", None, age_s=10 * STALE_AFTER_S)
    trash = _leftover(tmp_path, ".corpus.old-x", None, age_s=10 * STALE_AFTER_S)
    live = _leftover(tmp_path, ".corpus.partial-live", f"{host} {os.getpid()}")  # a concurrent prepare
    other_host = _leftover(tmp_path, ".corpus.partial-far", "another-host 1")
    young = _leftover(tmp_path, ".corpus.partial-young", None)  # between mkdtemp and its owner file
    other_out = _leftover(tmp_path, ".other.partial-dead", f"{host} {_dead_pid()}")

    args = ["data", "prepare", "--data", str(_corpus(tmp_path)), "--tokenizer", "word", "--out",
            str(tmp_path / "corpus"), "--workers", "1", "--quiet"]
    assert main(args) == 0
    err = capsys.readouterr().err
    for gone in (dead, ownerless, trash):
        assert not gone.exists()
        said = rf"removed {re.escape(gone.name)}, 4,\d\d\d bytes left by an earlier prepare that was killed"
        assert re.search(said, err)
    for kept in (live, other_host, young, other_out):
        assert kept.exists() and kept.name not in err
    assert len(TokenData(tmp_path / "corpus")) > 0
    assert not (tmp_path / "corpus" / OWNER).exists(), "the finished corpus carries no owner file"
    assert clean_stale_partials(tmp_path / "corpus") == []


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_killed_prepare_leftover_is_cleaned_by_the_next_run(tmp_path):
    corpus = tmp_path / "big.txt"
    corpus.write_text(("lorem ipsum dolor sit amet " * 40 + "\n\n") * 4000, encoding="utf-8")
    out = tmp_path / "corpus"
    code = ("import sys, time\n"
            "from emaprobe.data import prepare\n"
            "p = sys.modules['emaprobe.data.prepare']\n"
            "real = p._ShardWriter.write\n"
            "def slow(self, ids):\n"
            "    real(self, ids); print('writing', flush=True); time.sleep(60)\n"
            "p._ShardWriter.write = slow\n"
            f"prepare({str(corpus)!r}, 'word', {str(out)!r}, workers=1, quiet=True)\n")
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    left = list(tmp_path.glob(".corpus.partial-*"))
    assert len(left) == 1 and not out.exists()  # what a kill leaves: the hidden staging folder only
    run = subprocess.run(
        [sys.executable, "-m", "emaprobe.cli", "data", "prepare", "--data", str(corpus), "--tokenizer", "word",
         "--out", str(out), "--workers", "1", "--quiet"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert f"removed {left[0].name}" in run.stderr
    assert not list(tmp_path.glob(".corpus.*")) and (out / "manifest.json").is_file()


def test_stale_partials_of_a_bracketed_name_are_its_own(tmp_path):
    import socket

    dead = f"{socket.gethostname()} {_dead_pid()}"
    own = _leftover(tmp_path, ".run[1].partial-x", dead)
    own_trash = _leftover(tmp_path, ".run[1].old-x", None, age_s=10 * STALE_AFTER_S)
    other = _leftover(tmp_path, ".run1.partial-x", dead)  # what the unescaped class [1] matched
    assert sorted(clean_stale_partials(tmp_path / "run[1]", announce=False)) == sorted([own, own_trash])
    assert other.exists() and not own.exists() and not own_trash.exists()


def test_orphan_watchdog_exits_once_the_parent_changes():
    from emaprobe.data.prepare import _exit_when_orphaned

    class Exited(Exception):
        pass

    def exit_now(code):
        raise Exited(code)

    ppids = iter([41, 41, 41, 1])  # re-parented to init after three polls
    sleeps = []
    with pytest.raises(Exited) as info:
        _exit_when_orphaned(41, poll_s=0.5, getppid=lambda: next(ppids), sleep=sleeps.append, exit_now=exit_now)
    assert info.value.args == (1,) and sleeps == [0.5, 0.5, 0.5]
    # a parent already gone when the worker starts: exit at once, without a poll
    with pytest.raises(Exited):
        _exit_when_orphaned(41, getppid=lambda: 1, sleep=sleeps.append, exit_now=exit_now)
    assert len(sleeps) == 3


def test_workers_start_the_watchdog_with_the_prepare_pid(monkeypatch):
    import importlib

    prep = importlib.import_module("emaprobe.data.prepare")  # the package re-exports a function of that name
    started = []

    class FakeThread:
        def __init__(self, target, args, name, daemon):
            started.append((target, args, daemon))

        def start(self):
            pass

    signals = []
    monkeypatch.setattr(prep.threading, "Thread", FakeThread)
    monkeypatch.setattr(prep, "load_tokenizer", lambda path: None)
    monkeypatch.setattr(prep.signal, "signal", lambda sig, handler: signals.append((sig, handler)))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    prep._init_worker("tok", 1234)
    assert started == [(prep._exit_when_orphaned, (1234,), True)]
    # Ctrl-C to the process group is the parent's to act on: a worker it killed while starting hung prepare
    assert signals == [(prep.signal.SIGINT, prep.signal.SIG_IGN)]


def test_a_prepare_that_stops_early_ends_its_workers_at_once(tmp_path):
    # the consumer gives up (Ctrl-C, an error): the pool's workers are ended, not waited for
    import importlib
    import multiprocessing as mp

    import numpy as np

    from emaprobe.data import WordTokenizer

    prep = importlib.import_module("emaprobe.data.prepare")
    tok = WordTokenizer(["a", "b", "<unk>", "<eos>"])
    tok_dir = tok.save(tmp_path / "tokenizer")
    before = set(mp.active_children())
    chunks = iter([["a b a"] * 50] * 40)
    gen = prep._encoded_chunks(chunks, tok, tok_dir, np.dtype("uint16"), 2)
    ids, docs, _ = next(gen)
    assert docs == 50 and len(ids) == 200
    workers = set(mp.active_children()) - before
    assert workers
    gen.close()
    # ended = each process's sentinel is ready (its end of a pipe closes as it exits). Not is_alive(): that asks
    # waitpid, and the executor's own thread may reap the same process at the same moment, in which case
    # is_alive() says True for a process already gone (about 1 run in 9 on 2 loaded cores)
    from multiprocessing.connection import wait

    assert len(wait([p.sentinel for p in workers], timeout=0)) == len(workers)
