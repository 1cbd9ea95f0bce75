"""Distributed data parallel set-up, for runs started by ``torchrun``.

``torchrun`` sets RANK, LOCAL_RANK and WORLD_SIZE; without them the run is a single
process and nothing here talks to ``torch.distributed``. The backend is NCCL on GPU
and gloo on CPU.

When one rank fails mid-run, it records its error in the process group's store
(``record_failure``) and leaves without the closing barrier; the others' pending
collective then fails, and they stop with an error that names the failed rank
(``recorded_failure``). ``EMAPROBE_DIST_TIMEOUT`` (seconds) bounds any collective
that still waits (NCCL does not notice a peer that left). Under torchrun the store is
the agent's, so it outlives any rank; launched without an agent (rank 0 hosting the
store), a peer that reads it after a failed rank 0 has left gets the backend's own
error ("Connection closed by peer") instead of the failure's.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_dist_info() -> DistInfo:
    """Rank and world size from the torchrun environment (a single process without it)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise ValueError(f"RANK / LOCAL_RANK / WORLD_SIZE must be integers: {err}") from err
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return DistInfo(rank=rank, local_rank=local, world_size=world)


def resolve_device(preference: str, info: DistInfo) -> torch.device:
    """``auto`` takes CUDA when available; each DDP rank gets its own GPU."""
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {preference!r}")
    use_cuda = preference == "cuda" or (preference == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but torch sees no CUDA device")
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


ENV_TIMEOUT = "EMAPROBE_DIST_TIMEOUT"  # seconds a collective may wait (default: torch's)
FAILURE_KEY = "emaprobe/failure"  # set in the process group's store by the first rank that fails


def dist_timeout() -> timedelta | None:
    value = os.environ.get(ENV_TIMEOUT)
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError as err:
        raise ValueError(f"{ENV_TIMEOUT} must be a number of seconds, got {value!r}") from err
    if not seconds > 0:
        raise ValueError(f"{ENV_TIMEOUT} must be > 0 seconds, got {value!r}")
    return timedelta(seconds=seconds)


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Join the process group once (no-op for a single process or when already joined)."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = dist_timeout()
    extra = {"timeout": timeout} if timeout is not None else {}
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size, **extra)


def shutdown_distributed(clean: bool = True) -> None:
    """Leave the process group.

    After a clean run the ranks meet at a barrier first: a rank that tears down gloo
    while another still talks to it aborts that one ("terminate called without an
    active exception"), which a 2-process CPU test hit about once in ten runs. After a
    failure (``clean=False``) there is no barrier, since the others may wait in a
    collective this rank will never join; leaving closes this rank's connections, so
    their collective fails at once (gloo) instead of hanging until the timeout.

    A DDP wrapper lies in a reference cycle, so one that is no longer used is freed only by the
    garbage collector, and its reducer keeps the group (and any gloo work it holds) alive until
    then: past ``destroy_process_group``, to the interpreter's teardown, where freeing gloo work
    can abort the process (pytorch/pytorch#179291). A collection first frees them while the
    group is still whole.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def _store(wait_s: float = 5.0):
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(timedelta(seconds=wait_s))
        return store
    except Exception:  # noqa: BLE001 - no store (or its host is gone): nothing to share
        return None


def record_failure(message: str) -> None:
    """Leave this rank's failure where the other ranks can read it (best effort; the first one stays)."""
    store = _store()
    if store is None:
        return
    try:
        if not store.check([FAILURE_KEY]):
            store.set(FAILURE_KEY, message)
    except Exception:  # noqa: BLE001 - the store's host (rank 0 or the agent) may be gone
        pass


def recorded_failure() -> str | None:
    """The failure another rank recorded, if any (None when none was, or when the store is gone)."""
    store = _store()
    if store is None:
        return None
    try:
        return store.get(FAILURE_KEY).decode() if store.check([FAILURE_KEY]) else None
    except Exception:  # noqa: BLE001
        return None


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= info.world_size
    return t


def all_gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj``, in rank order (just ``[obj]`` for a single process)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
