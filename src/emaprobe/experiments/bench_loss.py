"""Benchmark: the language models' loss (token cross-entropy over the vocabulary) in each form, in one run,
alone and with the tied head before it.

Command:   emaprobe bench loss --device cuda [--tokens 16384] [--vocab 50257] [--width 768] [--out runs/bench]
Hardware:  one CUDA GPU; on CPU only the ``torch`` forms run (a smoke run of the command).
Run time:  under a minute on one H100 or H200 (most of it compiling the ``compiled`` forms).
Expected:  the fused forms near their floors; ``torch`` (``F.cross_entropy`` over a float32 copy, what an
           eager model paid) several times slower; ``compiled`` (the same under ``torch.compile``) between.

Two rows, each with three forms (``fused``, ``compiled``, ``torch``):

``loss``  ``ops.cross_entropy`` of bf16 logits (N, V), N = ``--tokens`` (a training step's tokens); fused is
          two Triton passes over the logits (``ops/losses.py``).
``head``  ``ops.linear_cross_entropy`` of h (N, D) and the head's weight (V, D), D = ``--width``: what
          training runs (``LanguageModel.loss``); fused is the product padded to 64 columns, the two passes
          and the backward's products over the padded rows, in one op.

What is timed: forward alone (under ``no_grad``) and forward+backward (the gradients to the logits, or to h
and the weight), mean reduction, medians of back-to-back calls (``triton.testing.do_bench``;
``time.perf_counter`` medians on CPU), after checking each form's loss and gradients against the torch
form's. The floor is the fused passes' bytes at the card's copy bandwidth (the logits read once forward;
forward+backward read twice and their gradient written once: 2 N V and 6 N V bytes in bf16); the head's
rows add the logits written once by the product and the products' FLOPs (2 N D V forward, three times that
forward+backward) at the card's dense bf16 peak (``experiments.common.PEAK_TFLOPS``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from emaprobe.experiments.common import bench_eager_ms, card_slug, copy_bandwidth, median_times, peak_flops
from emaprobe.ops.losses import cross_entropy, linear_cross_entropy
from emaprobe.utils import atomic_write_json, run_record

def _forms(device: torch.device, loss) -> dict:
    """name -> loss(...): the forms of ``loss`` (``cross_entropy`` or ``linear_cross_entropy``) that run on
    ``device``; compiled is torch.compile of the torch form."""
    torch_form = functools.partial(loss, impl="torch")
    if device.type != "cuda":
        return {"torch": torch_form}
    return {"fused": functools.partial(loss, impl="fused"), "compiled": torch.compile(torch_form), "torch": torch_form}


def _median_ms(fn, device: torch.device, repeats: int) -> float:
    # CUDA: back-to-back calls with the L2 cleared between them; CPU: the FFN benchmark's timer
    if device.type == "cuda":
        return bench_eager_ms(fn)
    return median_times({"fn": fn}, repeats, device, warmup=1)["fn"] * 1e3


def _measure(forms: dict, inputs: tuple, leaves: tuple, row: dict, device: torch.device, repeats: int) -> dict:
    """Check every form's loss and gradients (to ``leaves``) against the torch form's, then time it."""
    ref = forms["torch"](*inputs)
    grefs = torch.autograd.grad(ref, leaves)
    for name, fn in forms.items():
        loss = fn(*inputs)
        grads = torch.autograd.grad(loss, leaves)
        # the check before the clock: every form gives the reference's loss and gradients
        row[f"{name}_loss_err"] = abs(loss.item() - ref.item())
        row[f"{name}_grad_err"] = max((g.float() - r.float()).abs().max().item() for g, r in zip(grads, grefs))

        def fwd(fn=fn):
            with torch.no_grad():
                return fn(*inputs)

        def fwd_bwd(fn=fn):
            return torch.autograd.grad(fn(*inputs), leaves)

        row[f"{name}_fwd_ms"] = _median_ms(fwd, device, repeats)
        row[f"{name}_fwd_bwd_ms"] = _median_ms(fwd_bwd, device, repeats)
    return row


def run(tokens: int = 16384, vocab: int = 50257, width: int = 768, device: str = "cuda", repeats: int = 5,
        out_dir: str | Path | None = "runs/bench") -> dict:
    """Time every form, print the tables and write ``loss_<card>.json`` to ``out_dir`` (None: no file)."""
    for flag, value in (("--tokens", tokens), ("--vocab", vocab), ("--width", width), ("--repeats", repeats)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to torch")
    gen = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    logits = (torch.randn(tokens, vocab, generator=gen) * 2).to(dev, dtype).requires_grad_()
    target = torch.randint(0, vocab, (tokens,), generator=gen).to(dev)
    h = torch.randn(tokens, width, generator=gen).to(dev, dtype).requires_grad_()
    w = (torch.randn(vocab, width, generator=gen) * 2 / width ** 0.5).to(dev, dtype).requires_grad_()
    shape = {"N": tokens, "V": vocab, "dtype": str(dtype).removeprefix("torch.")}
    loss_forms = _forms(dev, cross_entropy)
    rows = [_measure(loss_forms, (logits, target), (logits,), {"part": "loss", **shape}, dev, repeats),
            _measure(_forms(dev, linear_cross_entropy), (h, w, target), (h, w), {"part": "head", "D": width, **shape},
                     dev, repeats)]
    forms = list(loss_forms)  # the same names in both rows
    on_gpu = dev.type == "cuda"
    card = torch.cuda.get_device_name(dev) if on_gpu else "cpu"
    bw = copy_bandwidth() if on_gpu else None
    peak, peak_source = peak_flops(dev)
    if on_gpu:
        size = logits.element_size()
        for row in rows:
            # the fused passes' bytes (the copy bandwidth counts bytes read plus bytes written): the logits read
            # once forward, twice forward+backward, their gradient written once; the head's rows add the
            # products at the card's peak (1 forward, 3 forward+backward) and the logits written once
            head = row["part"] == "head"
            gemm = 2 * tokens * width * vocab / peak if head and peak else 0.0
            row["floor_fwd_ms"] = ((1 + head) * tokens * vocab * size / bw + gemm) * 1e3
            row["floor_fwd_bwd_ms"] = ((3 + head) * tokens * vocab * size / bw + 3 * gemm) * 1e3
            for name in forms:
                for what in ("fwd", "fwd_bwd"):
                    row[f"{name}_{what}_x_floor"] = row[f"{name}_{what}_ms"] / row[f"floor_{what}_ms"]
    for row in rows:
        print(format_table(row, forms, card))
    result = run_record(device=dev, benchmark=f"loss-{dev.type}", card=card, **({"copy_bandwidth_Bps": bw} if on_gpu else {}),
                        peak_flops=peak, peak_flops_source=peak_source, repeats=repeats, rows=rows)
    if out_dir is not None:
        path = atomic_write_json(Path(out_dir) / f"loss_{card_slug(card)}.json", result)
        print(f"wrote {path}")
    return result


def format_table(row: dict, forms: list[str], card: str) -> str:
    what = (f"the head and the loss, h {row['N']} x {row['D']} and W {row['V']} x {row['D']}" if row["part"] == "head"
            else f"token cross-entropy, {row['N']} x {row['V']} logits")
    floor = (f"; x = time over the floor (the fused passes' bytes at the copy bandwidth"
             f"{', the products at the peak' if row['part'] == 'head' else ''})" if "floor_fwd_ms" in row else "")
    lines = [f"{what}, {row['dtype']}, {card}{floor}",
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
