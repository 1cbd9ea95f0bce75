"""Launch planning for the Triton scans: tile shapes, time segments and warm-ups.

Pure Python (no Triton, no GPU): every function takes the GPU's SM count as ``sms``, so the
plans can be computed and tested anywhere. ``common.sm_count(device)`` reads it off a CUDA
device at launch time.

A launch runs ``programs`` programs (batch x channel blocks), each of ``cfg.num_warps`` warps.
When too few warps would run to fill the GPU, time is cut into segments (``segments``). A
segment gets its incoming state either from a warm-up (one pass: it scans, unstored, the steps
before it over which a fixed decay forgets, ``warm_steps``; ``warm_plan``) or from a second pass
that combines the end states of the segments before it. ``ema_plan`` picks between them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TileConfig:
    """Launch shape: CT time steps by ``block`` channels per tile, ``num_warps`` warps a program.

    ``block`` must be a multiple of 32 * ``vec`` * ``num_warps``: then a warp's lanes lie
    along channels (``vec`` adjacent channels each) and every tile row stays in one
    thread, so the in-tile scan is a sequential loop in registers with no shuffles.
    ``stages``: tiles in flight per program (Triton software-pipelines the loads as
    asynchronous copies ``stages - 1`` iterations ahead); ``warm_stages`` the same for the EMA
    kernels' warm-up loops below, which hold no outputs and go deeper (6 against 4: B=1 T=65536 EMA
    forward 0.167 against 0.168 ms, backward 0.182 against 0.186; 8 was slower); ``linear_scan``'s
    forward warms up inside its segment's own loop, at ``stages``.
    ``seg_stages`` (the EMA forward): the same for a segment's own steps where segments warm up
    (None: ``stages``); one pass and two passes keep ``stages``.
    ``min_programs``: below this many (batch x channel-block) programs the time axis is
    cut into segments (two passes, one extra read of the input) to fill the GPU;
    0 means: split below ``SPLIT_BELOW_PER_SM`` warps per SM, into enough segments for
    ``WARPS_PER_SM`` (``warps``). ``split`` forces segments on (True) or off (False).
    ``warmup`` (the EMA kernels and ``linear_scan``'s forward): how segments get their incoming
    state. True: in one pass, each scanning the steps before it from zero for as long as a
    timescale remembers anything at float32 resolution, or 8 bits under a narrower output's
    (``warm_steps``, ``warm_bits``; ``lin_warm_steps`` for ``linear_scan``, whose tiles that still
    remember are then rescanned exactly); False: two
    passes, the second combining the first's exact end states; None: warm-ups wherever
    segments of WARM_SEG_RATIO warm-ups each still make at least one warp per SM.
    """

    ct: int = 16
    block: int = 64
    num_warps: int = 1
    vec: int = 2
    stages: int = 4
    min_programs: int = 0
    split: bool | None = None
    warmup: bool | None = None
    warm_stages: int = 6
    seg_stages: int | None = None

    def __post_init__(self):
        for name in ("stages", "warm_stages", "seg_stages"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"TileConfig.{name}={getattr(self, name)} must be at least 1")
        if self.block % (32 * self.vec * self.num_warps):
            # a warp's 32 lanes must lie along channels, so that a tile's CT rows stay in one thread
            raise ValueError(f"TileConfig.block={self.block} must be a multiple of 32 * vec * num_warps "
                             f"= {32 * self.vec * self.num_warps}")


# Each kernel's defaults, widest first; ``choose`` takes the first that fills the GPU in one pass,
# or the narrowest if none does (EMA segments that warm up, 64 channels: B=1 T=65536 forward 0.169
# against 0.177 ms at 128, backward 0.186 against 0.193; notes/kernels.md).
# 128 channels a warp (8-byte accesses, 256-byte rows) beat 64 wherever enough programs run
# (B=64 T=512 EMA forward 0.081 against 0.087 ms); at B=16 D=768 they leave SMs idle, and 64
# channels a warp run. The forward puts two such warps side by side in a program, so that one program
# reads and writes whole 256-byte rows (B=4 T=8192 0.0845 against 0.0882 ms, B=1 T=65536 0.1577
# against 0.1622, B=16 T=2048 0.0777 against 0.0783; notes/kernels.md). Depths from the H100
# sweeps in notes/kernels.md.
# linear_scan's backward keeps 64: its 128-wide, pipelined, segmented backward got a broadcast decay
# wrong on the H100 (F=40; right unpipelined, in one pass and in Triton's interpreter). Its forward
# takes two 64-channel warps a program, as the EMA forward does: 32 rows where they fill the GPU in one
# pass (H200, B=16 T=2048 D=768: 1.29x the floor against 1.48x for one warp), 16 rows, 4 deep, in
# segments at four warps an SM (LIN_WARM_WARPS_PER_SM). With each segment's warm-up inside its own loop
# (``_lin_fwd_warm_span``), the two-warp tile beat the one-warp 64-channel one at every segmented grid
# shape (H100, the grid alternated against the one-warp tile, means of two runs: B=4 T=8192 D=768 1.159 ->
# 1.130x, B=1 T=65536 D=256 1.205 -> 1.176, 2.4-4.6% at all 11; notes/kernels.md, "selective forward,
# two-warp segments"); before it, 64 channels had won in segments (H200: 128 at
# 1.66-2.03x against 1.50-1.76x, "selective forward, two-warp programs"). For that one-warp tile, 16
# rows 4 deep at four warps an SM beat 32 rows, 3 deep, three warps (H100, B=8 T=2048 D=1024 1.338 ->
# 1.293x), which beat two warps (B=4 T=8192 D=768 1.290 against 1.383x; "selective forward, shorter
# tiles", "warm-up segments, the SMs filled once").
# The narrow forward's segments that warm up run their own steps 6 deep (``seg_stages``). H100, the grid command
# twice against the tree before, alternated in one call (notes/kernels.md, "the EMA forward's warm-up segments,
# 6 deep"), means of two runs: 1x65536x256 1.314 -> 1.282x the floor, 8x8192x256 1.295 -> 1.275, 2x8192x1024
# 1.279 -> 1.264; 4x8192x768 1.215 -> 1.242 and 2x2048x4096 1.225 -> 1.233, the two it slows. In one pass
# (16x2048x768) 6 deep was slower (1.159 -> 1.239, a sweep), so ``stages`` stays 4 there
EMA_FWD = (TileConfig(ct=16, block=128, vec=4, stages=4),
           TileConfig(ct=32, block=128, num_warps=2, vec=2, stages=4, seg_stages=6))
EMA_BWD = (TileConfig(ct=16, block=128, vec=4, stages=3), TileConfig(ct=16, block=64, vec=2, stages=4))
LIN_FWD = (TileConfig(ct=32, block=128, num_warps=2, vec=2, stages=4),
           TileConfig(ct=16, block=128, num_warps=2, vec=2, stages=4))
LIN_BWD = (TileConfig(ct=16, block=64, vec=2, stages=3),)
# The gated form (``gated_scan``) holds more per element (logits, x, gates; the backward also h_{t-1}
# and the gradients): at linear_scan's depths its sm_90 code spills (200-760 bytes of stack a thread
# in Triton 3.6), at half of them it does not. Its kernels are bound by instruction issue and the
# special-function unit, not by bytes, so its segments take two passes: a warm-up rescans wherever a
# decay remembers past it, as the selective mixer's long timescales (0.9, 0.98 at initialisation) do
# (H200, B2 T8192 S3 D768: 0.180 ms forward against 0.267 with warm-ups; notes/kernels.md).
GATED_FWD = (TileConfig(ct=16, block=128, num_warps=2, vec=2, stages=4),
             TileConfig(ct=16, block=64, vec=2, stages=4, warmup=False))
GATED_BWD = (TileConfig(ct=8, block=64, vec=2, stages=3),)
# Time is cut into segments only when fewer than SPLIT_BELOW_PER_SM warps per SM would run (one-warp
# programs, or a program's warps counted apart), and then into enough for WARPS_PER_SM (H100,
# pipelined loads: at 1.45 per SM one pass took 0.091 ms against 0.113 split; at B=4 T=8192, 8 per
# SM beat 2 and 24, 0.108 against 0.120 and 0.114 ms; notes/kernels.md).
SPLIT_BELOW_PER_SM = 1
WARPS_PER_SM = 8
# Segments that warm up: each at least WARM_SEG_RATIO times its warm-up (the warm-up re-reads
# 1 / WARM_SEG_RATIO of the input), and as many as keep the launch at or under WARM_WARPS_PER_SM
# warps an SM: rounded down, since a program past what the SMs hold runs beside another on one SM
# and the launch waits for that SM. Where that leaves fewer than one warp per SM, two passes run
# instead. A timescale's warm-up is the steps after which the state it starts from weighs under
# 2**-bits: WARM_BITS (float32 keeps 24) where the outputs are float32, and WARM_MARGIN_BITS under the
# outputs' own resolution where they have fewer bits (``warm_bits``). H100, the grid's few-channel shapes (notes/kernels.md,
# "warm-up segments, the SMs filled once"): rounding down and segments of one warm-up against
# rounding up and two, EMA forward 1.455 -> 1.333x the floor at B=8 T=8192 D=256, 1.383 -> 1.185 at
# B=1 T=8192 D=4096, 1.323 -> 1.142 at B=1 T=65536 D=1024; the backward 1.707 -> 1.494 at B=8 T=8192
# D=256. linear_scan's forward, whose warm-up is short (LIN_WARM_STEPS), runs LIN_WARM_WARPS_PER_SM
# (see LIN_FWD); the EMA kernels two (three was slower at 8 of 12 shapes in the backward, and the
# forward at 11 of the 16 grid shapes by more than 1%).
WARM_SEG_RATIO = 1
WARM_WARPS_PER_SM = 2
LIN_WARM_WARPS_PER_SM = 4
WARM_BITS = 24
WARM_MARGIN_BITS = 8
# A segment that warms up first scans its warm-up, reading x alone and storing nothing: WARM_STEP_COST of
# one of its own steps each. Only the first segment has none, so the EMA forward gives it that much more
# of its own steps (``first_segment``) and a launch's programs end together: at two segments (T = 2048
# in the grid) the others are about 10% shorter. H100, the EMA forward at the grid's T2048 shapes
# (notes/kernels.md, "a longer first segment"): 0.75 took 3-5% off against an even cut, 0.5 1-4%;
# 1.0 slowed the T8192 shapes by 2-7%
WARM_STEP_COST = 0.75
# linear_scan's decays are data: its segments warm up over this many steps, and a tile where some
# channel's decays there multiply to more than 2**-24 is rescanned from its exact incoming state
# (decays under 0.878 on average forget within it: 0.878**128 = 2**-24). Outputs of fewer bits warm
# up over proportionally fewer steps to their ``warm_bits`` (``lin_warm_steps``)
LIN_WARM_STEPS = 128
# The EMA forward's traces are 3/4 of its bytes and are not read back by it: their stores are
# marked evict_first, so that they leave L2 before the input does (notes/kernels.md)
EMA_OUT_POLICY = "evict_first"


def choose(cfg: TileConfig | None, defaults: tuple[TileConfig, ...], B: int, F: int, sms: int) -> TileConfig:
    """``cfg`` if given; else the widest default whose one-pass launch has at least
    SPLIT_BELOW_PER_SM warps per SM, or failing all, the narrowest (which cuts time into
    segments, and gets the most warps out of each)."""
    if cfg is not None:
        return cfg
    for c in defaults:
        if B * -(-F // c.block) * c.num_warps >= SPLIT_BELOW_PER_SM * sms:
            return c
    return defaults[-1]


def warps(cfg: TileConfig, programs: int, per_sm: int, sms: int) -> tuple[int, int]:
    """(warps a launch of ``programs`` programs runs, warps it should run): a program of
    ``cfg.num_warps`` warps counts that many; ``cfg.min_programs``, if set, counts programs."""
    return programs * cfg.num_warps, cfg.min_programs * cfg.num_warps or per_sm * sms


def segments(cfg: TileConfig, programs: int, T: int, sms: int) -> tuple[int, int]:
    """(NSEG, SEGLEN) for ``programs`` programs of ``cfg.num_warps`` warps: one segment unless too few
    warps would run, then enough to fill the GPU."""
    if cfg.split is False or T <= 4 * cfg.ct:
        return 1, T
    warps_run, want = warps(cfg, programs, WARPS_PER_SM, sms)
    _, threshold = warps(cfg, programs, SPLIT_BELOW_PER_SM, sms)
    if cfg.split is None and warps_run >= threshold:
        return 1, T
    nseg = max(2, min(-(-want // max(warps_run, 1)), T // (4 * cfg.ct)))
    seglen = -(-(-(-T // nseg)) // cfg.ct) * cfg.ct  # a multiple of CT
    return -(-T // seglen), seglen


def warm_bits(significand_bits: int) -> int:
    """The bits a warm-up keeps for outputs of ``significand_bits`` (bf16 8, float16 11, float32 24):
    WARM_MARGIN_BITS more than they hold, at most float32's WARM_BITS. bf16 16, float16 19, float32 24."""
    return min(WARM_BITS, significand_bits + WARM_MARGIN_BITS)


def warm_steps(alphas, ct: int = 1, bits: int = WARM_BITS) -> list[int] | None:
    """Steps W_k after which timescale k forgets: |1 - alpha_k| ** W_k <= 2**-bits, rounded up
    to a multiple of ``ct``; None if some |1 - alpha_k| >= 1 (a state that never fades).

    A segment scanned from zero W_k steps early then differs from the exact scan by at most
    2**-bits times the state it dropped (the state W_k steps back), decaying from there: at 24 bits,
    an absolute error at float32's resolution of that state; at ``warm_bits`` of a narrower output,
    2**-WARM_MARGIN_BITS of that output's resolution of it. Relative to a much smaller state
    (after inputs that fell by orders of magnitude) it is larger than the sequential scan's own
    rounding; ``TileConfig(warmup=False)`` keeps the exact two passes. At the default alphas
    (0.5, 0.1, 0.02): 24, 158 and 824 steps at 24 bits; 16, 106 and 549 at bf16's 16.
    """
    out = []
    for a in alphas:
        d = abs(1.0 - float(a))
        if not d < 1.0:  # also NaN
            return None
        w = 0 if d == 0.0 else math.ceil(bits * math.log(2.0) / -math.log(d))
        out.append(-(-w // ct) * ct)
    return out


def lin_warm_steps(bits: int = WARM_BITS, ct: int = 1) -> int:
    """linear_scan's warm-up for outputs whose warm-ups keep ``bits`` (``warm_bits``): LIN_WARM_STEPS
    scaled by bits / WARM_BITS, so that decays under 0.878 on average still forget within it
    (0.878**86 = 2**-16), rounded up to a multiple of ``ct``. bf16 at 16-row tiles: 96 steps."""
    w = math.ceil(LIN_WARM_STEPS * bits / WARM_BITS)
    return -(-w // ct) * ct


def warm_plan(cfg: TileConfig, programs: int, T: int, warm: int, sms: int,
              per_sm: int = WARM_WARPS_PER_SM) -> tuple[int, int] | None:
    """(NSEG, SEGLEN) for one pass of segments that each warm up over ``warm`` steps, at most ``per_sm``
    warps an SM (or ``cfg.min_programs`` programs); None where that gives one segment, or (unless
    ``cfg.warmup`` forces it) under one warp per SM: two passes then."""
    warps_run, want = warps(cfg, programs, per_sm, sms)
    seglen = max(-(-T // max(1, want // max(warps_run, 1))), WARM_SEG_RATIO * warm, cfg.ct)
    seglen = -(-seglen // cfg.ct) * cfg.ct
    nseg = -(-T // seglen)
    if nseg == 1 or (nseg * warps_run < sms and not cfg.warmup):
        return None
    return nseg, seglen


def first_segment(T: int, nseg: int, seglen: int, warm: int, ct: int,
                  cost: float | None = None) -> tuple[int, int]:
    """(SEGLEN, FIRST) for NSEG segments of which all but the first warm up over ``warm`` steps, each
    ``cost`` (default WARM_STEP_COST) of a step of their own: the later segments SEGLEN steps long (a
    multiple of ``ct``), the first the rest, FIRST = T - (NSEG - 1) SEGLEN, so that every segment's
    program does about the same work. (seglen, seglen), the plan's even cut, where nothing warms up or
    where that would not shorten the later segments."""
    cost = WARM_STEP_COST if cost is None else cost
    if nseg < 2 or warm <= 0 or cost <= 0:
        return seglen, seglen
    rest = (T - int(cost * warm) + nseg - 1) // nseg
    rest = (rest + ct - 1) // ct * ct  # a multiple of CT
    first = T - (nseg - 1) * rest
    if rest >= seglen or first < rest:
        return seglen, seglen
    return rest, first


def ema_plan(cfg: TileConfig, programs: int, T: int, alphas, sms: int,
             bits: int = WARM_BITS) -> tuple[int, int, list[int] | None]:
    """(NSEG, SEGLEN, per-timescale warm-up steps or None) for an EMA launch of ``programs`` programs
    whose warm-ups keep ``bits`` (``warm_bits``)."""
    nseg, seglen = segments(cfg, programs, T, sms)
    if nseg == 1 or cfg.warmup is False:
        return nseg, seglen, None
    warm = warm_steps(alphas, cfg.ct, bits)
    plan = None if warm is None else warm_plan(cfg, programs, T, max(warm), sms)
    if plan is None:
        return nseg, seglen, None
    return plan[0], plan[1], warm
