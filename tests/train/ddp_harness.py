"""The rendezvous of the two-process DDP tests, set up as ``torchrun`` sets it up."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from torch.distributed import TCPStore


@contextlib.contextmanager
def agent_store() -> Iterator[int]:
    """The port of a TCPStore this test process hosts, as torchrun's agent hosts one for its workers.

    Each worker then calls ``worker_env(rank, port, world)``. Two things follow, as under torchrun: no
    rank owns the store, so what a failed rank 0 records there outlives it (when rank 0 hosted it, a
    slow peer could read the store after rank 0 had left and get gloo's "Connection closed by peer"
    instead of the failure); and the OS picks the port as it binds it, so no other process can take
    it between a free-port probe and the bind.
    """
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    yield store.port  # the store lives as long as this frame: until the with block ends


def worker_env(rank: int, port: int, world: int, **extra: str) -> None:
    """The environment torchrun gives a worker, set in this (spawned) process."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), TORCHELASTIC_USE_AGENT_STORE="True", **extra)
