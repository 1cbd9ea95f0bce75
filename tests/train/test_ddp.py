"""Two-process DDP on CPU (gloo): the same gradients as one process on the combined batch, the loop
under DDP, and no DDP wrapper left alive for the interpreter's teardown after `shutdown_distributed`."""

from __future__ import annotations

import gc
import weakref

import torch
import torch.multiprocessing as mp

from emaprobe.models import build_model
from emaprobe.train import DistInfo, LMData, TrainConfig, accumulate_gradients, load_checkpoint, train_lm, wrap_model
from emaprobe.train.dist import env_dist_info, init_distributed, shutdown_distributed

from ddp_harness import agent_store, worker_env

WORLD = 2
V = 64


def _small_spen():
    torch.manual_seed(0)
    return build_model("spen-tiny", vocab_size=V, d_model=32, n_layer=2, d_bottleneck=24, d_ff=64, n_head=2)


def _batch():
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, V, (8, 17), generator=g)  # 8 rows: 4 per rank, 2 micro-steps of 2
    return tokens[:, :-1], tokens[:, 1:]


def _ddp_gradients(rank: int, info, device, out: str) -> weakref.ref:
    """This rank's gradients under DDP, saved; a weak reference to the DDP wrapper, garbage on return."""
    model = _small_spen()
    run = wrap_model(model, info, device)
    x, y = _batch()
    mine = slice(4 * rank, 4 * rank + 4)
    micro = [(x[mine][:2], y[mine][:2]), (x[mine][2:], y[mine][2:])]  # gradient accumulation under no_sync
    accumulate_gradients(run, micro)
    torch.save({k: p.grad.clone() for k, p in model.named_parameters()}, f"{out}/grads{rank}.pt")
    return weakref.ref(run)


def _worker(rank: int, port: int, out: str) -> None:
    worker_env(rank, port, WORLD)
    torch.set_num_threads(1)
    gc.disable()  # only shutdown_distributed's own collection may free the wrapper below
    info = env_dist_info()
    device = torch.device("cpu")
    init_distributed(info, device)
    try:
        wrapper = _ddp_gradients(rank, info, device, out)

        # the whole loop under DDP: every rank samples its own stream, rank 0 checkpoints them all
        tokens = torch.randint(0, V, (3_000,), generator=torch.Generator().manual_seed(1))
        # device cpu: gloo ranks on the CPU, also on a machine with one GPU (where "auto" would take it)
        cfg = TrainConfig(steps=4, batch_size=2, seq_len=16, log_every=1, eval_every=2, eval_batches=2, ckpt_every=2,
                          device="cpu")
        train_lm(_small_spen(), LMData(train=tokens, val=tokens[:500]), cfg, f"{out}/run", quiet=True)
    finally:
        shutdown_distributed()
    # a DDP wrapper left to the interpreter's teardown holds the group's gloo work there
    torch.save({"wrapper_freed": wrapper() is None}, f"{out}/shutdown{rank}.pt")


def test_two_process_ddp_gradients_equal_one_process_on_combined_batch(tmp_path):
    with agent_store() as port:
        mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=WORLD, join=True)
    model = _small_spen()
    x, y = _batch()
    accumulate_gradients(wrap_model(model, DistInfo(), torch.device("cpu")), [(x, y)])
    want = {k: p.grad for k, p in model.named_parameters()}
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"grads{rank}.pt")
        assert set(got) == set(want)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7, msg=f"rank {rank}, {k}")

    for rank in range(WORLD):
        assert torch.load(tmp_path / f"shutdown{rank}.pt") == {"wrapper_freed": True}, f"rank {rank}"

    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["step"] == 4 and ckpt["world_size"] == WORLD and len(ckpt["sampler"]) == WORLD
    s0, s1 = (s["generator"] for s in ckpt["sampler"])
    assert not torch.equal(s0, s1), "ranks must draw different batches"
