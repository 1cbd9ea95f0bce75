"""``experiments.common.run_pool``: jobs in workers, out-of-memory requeues, and stopping on a signal."""

import concurrent.futures as cf
import multiprocessing as mp
import signal
import threading
import time

import pytest
import torch

from emaprobe.experiments.common import errors_that_travel, run_pool
from emaprobe.train import TrainingInterrupted


def test_pool_queues_a_run_out_of_gpu_memory_again_and_runs_fewer_at_once():
    """Jobs that each take one of 2 units of a fake GPU's memory, 4 at a time at first: those that
    find it full go back in the queue and the pool shrinks until they fit; a job too big to fit
    alone fails, and only it."""
    lock, held, most = threading.Lock(), [0], [0]

    def train(job):
        need = 3 if job[0] == "huge" else 1
        with lock:
            if held[0] + need > 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 768.00 MiB")
            held[0] += need
            most[0] = max(most[0], held[0])
        time.sleep(0.02)
        with lock:
            held[0] -= need
        return job

    jobs = [(f"m{i}", (24, 2, 16), 1e-2, 0) for i in range(9)] + [("huge", (24, 2, 16), 1e-2, 0)]
    got = []
    with cf.ThreadPoolExecutor(max_workers=4) as pool:
        failed = run_pool(jobs, lambda j: pool.submit(train, j), got.append, limit=4)
    assert sorted(got) == sorted(jobs[:9]) and most[0] <= 2
    ((job, err),) = failed
    assert job[0] == "huge" and isinstance(err, torch.OutOfMemoryError)
    boom = RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
    calls = []

    def flaky(job):  # cuBLAS's allocation failure counts as out of memory; a plain error does not
        calls.append(job)
        if len(calls) == 1:
            raise boom
        if job[0] == "bad":
            raise ValueError("bad config")
        return job

    a, bad = ("a", (24, 2, 16), 1e-2, 0), ("bad", (24, 2, 16), 1e-2, 0)
    got.clear()
    with cf.ThreadPoolExecutor(max_workers=1) as pool:
        failed = run_pool([a, bad], lambda j: pool.submit(flaky, j), got.append, limit=2)
    assert got == [a] and [j for j, _ in failed] == [bad] and calls.count(a) == 2


def test_pool_requeues_a_run_out_of_memory_that_shared_the_card_even_once_down_to_one_at_a_time():
    """Two runs share the card and both run out of memory: the first handled drops the pool to one
    at a time, and the second, which also ran beside another, still goes back in the queue (it
    used to fail for good there, as on the H200 on 2026-12-04: ten gla runs)."""
    tries = {}

    def submit(job):  # an already-finished future: out of memory on each job's first try
        tries[job] = tries.get(job, 0) + 1
        fut = cf.Future()
        if tries[job] == 1:
            fut.set_exception(torch.OutOfMemoryError("CUDA out of memory"))
        else:
            fut.set_result(job)
        return fut

    x, y = ("ema", (24, 2, 16), 1e-2, 0), ("gla", (24, 2, 16), 1e-2, 0)
    got = []
    assert run_pool([x, y], submit, got.append, limit=2) == []
    assert sorted(got) == sorted([x, y]) and tries == {x: 2, y: 2}


def test_pool_on_sigterm_starts_no_job_waits_for_the_running_ones_and_says_what_stopped():
    """The device's lesson (2026-12-05): the main process of a parallel lm_scale run died on
    ``timeout``'s SIGTERM while its workers were still writing checkpoints. Now the pool waits:
    job a signals the main thread and finishes, job b stops as a checkpointed training run does,
    job c never starts, and the interrupt names the counts."""
    main = threading.main_thread().ident
    started, got, b_runs = [], [], threading.Event()

    def work(job):
        started.append(job)
        if job == "a":
            assert b_runs.wait(10)
            signal.pthread_kill(main, signal.SIGTERM)
            # finish only once the main thread has taken the signal (its handler puts the old one back): on a
            # loaded machine a fixed sleep could end first, and the pool would rightly start c
            deadline = time.monotonic() + 30
            while signal.getsignal(signal.SIGTERM) is not before and time.monotonic() < deadline:
                time.sleep(0.005)
            return "a done"
        b_runs.set()
        time.sleep(0.4)  # b: the checkpoint being written after the signal
        raise TrainingInterrupted("checkpoint at step 7")

    before = signal.getsignal(signal.SIGTERM)
    with cf.ThreadPoolExecutor(max_workers=2) as pool:
        with pytest.raises(KeyboardInterrupt) as err:
            run_pool(["a", "b", "c"], lambda j: pool.submit(work, j), got.append, limit=2)
    assert got == ["a done"] and sorted(started) == ["a", "b"]
    assert str(err.value) == ("SIGTERM: 1 run stopped, 1 not started, 0 failed; finished runs are saved, and the "
                              "same command goes on from here (a stopped run from its last checkpoint)")
    assert signal.getsignal(signal.SIGTERM) is before


def test_pool_a_worker_stopped_alone_does_not_stop_the_others_from_finishing():
    """A worker signalled by itself stops at its checkpoint; the jobs already running finish, the
    queue goes on, and the interrupt comes at the end."""
    got = []

    def work(job):
        if job == "b":
            raise TrainingInterrupted("checkpoint at step 3")
        return job

    with cf.ThreadPoolExecutor(max_workers=2) as pool:
        with pytest.raises(KeyboardInterrupt, match="a signal to the workers: 1 run stopped, 0 not started, 0 failed"):
            run_pool(["a", "b", "c"], lambda j: pool.submit(work, j), got.append, limit=2)
    assert sorted(got) == ["a", "c"]


class _HoldsAModule(Exception):
    """An error that cannot be pickled, as some of ``torch.compile``'s cannot (they hold a module)."""

    def __init__(self, message):
        super().__init__(message)
        self.module = torch


def _fails(kind: str):
    with errors_that_travel():
        if kind == "module":
            raise _HoldsAModule("codegen failed for buf13")
        raise ValueError("a plain error")


def test_a_workers_unpicklable_error_reaches_the_parent_by_type_and_message(capfd):
    """Through a process pool: an error holding a module comes back as a RuntimeError naming its type and
    message (not the pickling's own TypeError), with its traceback printed in the worker; a picklable one
    comes back as it is."""
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("fork")) as pool:
        with pytest.raises(RuntimeError, match=r"^_HoldsAModule: codegen failed for buf13$"):
            pool.submit(_fails, "module").result()
        with pytest.raises(ValueError, match="a plain error"):
            pool.submit(_fails, "plain").result()
    assert "Traceback" in capfd.readouterr().err
