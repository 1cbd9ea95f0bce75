"""A DDP rank that raises mid-step ends the whole job: a clear error on every rank, no hang, an intact checkpoint.

Two CPU processes (gloo) train a tiny SPEN; one rank's model raises in its forward
pass at step 4, after the checkpoint of step 2. That rank must report its own error,
the other an error naming it and its error, both within the time limit (a hang fails
the test), and checkpoint.pt must still load at step 2. Both ranks are tried as the
one that fails. The store is hosted by the test process, as torchrun's agent hosts it
(``ddp_harness``), so rank 0 failing does not take the recorded failure with it.
"""

from __future__ import annotations

import time
import traceback

import pytest
import torch
import torch.multiprocessing as mp

from emaprobe.models import build_model
from emaprobe.train import LMData, TrainConfig, load_checkpoint, train_lm
from emaprobe.train.dist import shutdown_distributed

from ddp_harness import agent_store, worker_env

WORLD = 2
V = 64
FAIL_AT_FORWARD = 4  # one forward per step (grad_accum 1, no eval before the end)
LIMIT_S = 120


class Faulty(torch.nn.Module):
    """The model, but the ``fail_at``-th forward on this rank raises."""

    def __init__(self, inner: torch.nn.Module, fail_at: int | None):
        super().__init__()
        self.inner, self.fail_at, self.calls = inner, fail_at, 0

    def forward(self, idx, *args, **kwargs):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise ValueError("injected fault in the forward pass")
        return self.inner(idx, *args, **kwargs)


def _worker(rank: int, port: int, out: str, fail_rank: int) -> None:
    worker_env(rank, port, WORLD, EMAPROBE_DIST_TIMEOUT="60")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    inner = build_model("spen-tiny", vocab_size=V, d_model=32, n_layer=1, d_bottleneck=16, d_ff=32, n_head=2)
    model = Faulty(inner, FAIL_AT_FORWARD if rank == fail_rank else None)
    tokens = torch.randint(0, V, (3_000,), generator=torch.Generator().manual_seed(1))
    # device cpu: gloo ranks on the CPU, also on a machine with one GPU (where "auto" would take it)
    cfg = TrainConfig(steps=6, batch_size=2, seq_len=16, log_every=1, eval_every=0, ckpt_every=2, device="cpu")
    clean = False
    try:
        train_lm(model, LMData(train=tokens), cfg, f"{out}/run", quiet=True)
        clean = True
        outcome = "finished"
    except Exception as err:  # noqa: BLE001 - the test reads what each rank ended with
        outcome = f"{type(err).__name__}: {err}"
        with open(f"{out}/trace{rank}.txt", "w") as f:
            f.write(traceback.format_exc())
    finally:
        shutdown_distributed(clean=clean)  # what the CLI does
    with open(f"{out}/outcome{rank}.txt", "w") as f:
        f.write(outcome)


@pytest.mark.parametrize("fail_rank", [1, 0])
def test_one_rank_raising_mid_step_ends_every_rank_with_a_clear_error(tmp_path, fail_rank):
    with agent_store() as port:
        ctx = mp.spawn(_worker, args=(port, str(tmp_path), fail_rank), nprocs=WORLD, join=False)
        deadline = time.monotonic() + LIMIT_S
        try:
            while not ctx.join(timeout=1):
                if time.monotonic() > deadline:
                    pytest.fail(f"the job hung: still running {LIMIT_S} s after start")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
    outcomes = {r: (tmp_path / f"outcome{r}.txt").read_text() for r in range(WORLD)}
    assert outcomes[fail_rank] == "ValueError: injected fault in the forward pass"
    peer = outcomes[1 - fail_rank]
    assert peer.startswith(f"PeerFailed: rank {1 - fail_rank} stopped at step 4 because rank {fail_rank} at step 4: "
                           "ValueError: injected fault in the forward pass"), peer
    assert "the last checkpoint is intact (step 2 in" in peer and "--resume" in peer

    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["step"] == 2 and ckpt["world_size"] == WORLD
    assert not list((tmp_path / "run").glob("*.tmp*")), "a half-written checkpoint was left behind"
