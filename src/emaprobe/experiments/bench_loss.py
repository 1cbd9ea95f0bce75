"""Benchmark: the language models' loss (token cross-entropy over the vocabulary) in each form, in one run.

Command:   emaprobe bench loss --device cuda [--tokens 16384] [--vocab 50257] [--out runs/bench]
Hardware:  one CUDA GPU; on CPU only the ``torch`` form runs (a smoke run of the command).
Run time:  under a minute on one H100 or H200 (most of it compiling the ``compiled`` form).
Expected:  the fused form (``ops/losses.py``: two Triton passes over the bf16 logits) near its floor;
           ``torch`` (``F.cross_entropy`` over a float32 copy, what an eager model pays) several times
           slower; ``compiled`` (the same under ``torch.compile``, what a compiled loss over a model's
           logits runs) between them. (Training calls ``model.loss``, the head and the fused loss in one op:
           ``ops.linear_cross_entropy``.)

What is timed: the loss of bf16 logits (N, V), N = ``--tokens`` (a training step's tokens), forward
alone (under ``no_grad``) and forward+backward (the gradient to the logits), mean reduction, medians of
back-to-back calls (``triton.testing.do_bench``; ``time.perf_counter`` medians on CPU). The floor is the
fused form's bytes at the card's copy bandwidth: the logits read once forward, and forward+backward
read twice and their gradient written once (2 N V and 6 N V bytes in bf16).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from emaprobe.experiments.common import bench_eager_ms, card_slug, copy_bandwidth, median_times
from emaprobe.ops.losses import cross_entropy
from emaprobe.utils import atomic_write_json, run_record

def _forms(device: torch.device) -> dict:
    """name -> loss(logits, target): the forms that run on ``device``; compiled is torch.compile of the torch form."""
    torch_form = functools.partial(cross_entropy, impl="torch")
    if device.type != "cuda":
        return {"torch": torch_form}
    return {"fused": functools.partial(cross_entropy, impl="fused"), "compiled": torch.compile(torch_form),
            "torch": torch_form}


def _median_ms(fn, device: torch.device, repeats: int) -> float:
    # CUDA: back-to-back calls with the L2 cleared between them; CPU: the FFN benchmark's timer
    if device.type == "cuda":
        return bench_eager_ms(fn)
    return median_times({"fn": fn}, repeats, device, warmup=1)["fn"] * 1e3


def run(tokens: int = 16384, vocab: int = 50257, device: str = "cuda", repeats: int = 5,
        out_dir: str | Path | None = "runs/bench") -> dict:
    """Time every form, print the table and write ``loss_<card>.json`` to ``out_dir`` (None: no file)."""
    for flag, value in (("--tokens", tokens), ("--vocab", vocab), ("--repeats", repeats)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to torch")
    gen = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    logits = (torch.randn(tokens, vocab, generator=gen) * 2).to(dev, dtype).requires_grad_()
    target = torch.randint(0, vocab, (tokens,), generator=gen).to(dev)
    forms = _forms(dev)
    ref = forms["torch"](logits, target)
    (gref,) = torch.autograd.grad(ref, logits)
    row: dict = {"N": tokens, "V": vocab, "dtype": str(dtype).removeprefix("torch.")}
    for name, fn in forms.items():
        loss = fn(logits, target)
        (g,) = torch.autograd.grad(loss, logits)
        # the check before the clock: every form gives the reference's loss and gradient
        row[f"{name}_loss_err"] = abs(loss.item() - ref.item())
        row[f"{name}_grad_err"] = (g.float() - gref.float()).abs().max().item()

        def fwd(fn=fn):
            with torch.no_grad():
                return fn(logits, target)

        def fwd_bwd(fn=fn):
            return torch.autograd.grad(fn(logits, target), logits)

        row[f"{name}_fwd_ms"] = _median_ms(fwd, dev, repeats)
        row[f"{name}_fwd_bwd_ms"] = _median_ms(fwd_bwd, dev, repeats)
    on_gpu = dev.type == "cuda"
    card = torch.cuda.get_device_name(dev) if on_gpu else "cpu"
    bw = copy_bandwidth() if on_gpu else None
    if on_gpu:
        size = logits.element_size()
        # the copy bandwidth counts bytes read plus bytes written
        row["floor_fwd_ms"] = tokens * vocab * size / bw * 1e3
        row["floor_fwd_bwd_ms"] = 3 * tokens * vocab * size / bw * 1e3
        for name in forms:
            for what in ("fwd", "fwd_bwd"):
                row[f"{name}_{what}_x_floor"] = row[f"{name}_{what}_ms"] / row[f"floor_{what}_ms"]
    print(format_table(row, list(forms), card))
    result = run_record(benchmark=f"loss-{dev.type}", card=card, **({"copy_bandwidth_Bps": bw} if on_gpu else {}),
                        repeats=repeats, rows=[row])
    if out_dir is not None:
        path = atomic_write_json(Path(out_dir) / f"loss_{card_slug(card)}.json", result)
        print(f"wrote {path}")
    return result


def format_table(row: dict, forms: list[str], card: str) -> str:
    lines = [f"token cross-entropy, {row['N']} x {row['V']} {row['dtype']} logits, {card}; "
             f"x = time over the floor (the fused form's bytes at the copy bandwidth)",
             f"{'form':<10}{'forward':>20}{'forward+backward':>22}{'|loss - torch|':>16}{'|grad - torch|':>16}"]
    for name in forms:
        cells = []
        for what in ("fwd", "fwd_bwd"):
            x = row.get(f"{name}_{what}_x_floor")
            cells.append(f"{row[f'{name}_{what}_ms']:.3f} ms" + (f" {x:.2f}x" if x is not None else ""))
        lines.append(f"{name:<10}{cells[0]:>20}{cells[1]:>22}{row[f'{name}_loss_err']:>16.2e}"
                     f"{row[f'{name}_grad_err']:>16.2e}")
    if "floor_fwd_ms" in row:
        lines.append(f"{'floor':<10}{row['floor_fwd_ms']:>17.3f} ms{row['floor_fwd_bwd_ms']:>19.3f} ms")
    return "\n".join(lines)
