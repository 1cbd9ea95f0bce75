"""The Triton scans' launch planner, on CPU: it is pure Python and takes the SM count as an argument.

The kernels themselves are tested against the naive reference in test_triton_scan.py (CUDA only).
"""

from __future__ import annotations

import pytest

from emaprobe.ops.triton import plan

ALPHAS = (0.5, 0.1, 0.02)
# SM counts of real cards: H100 SXM and H200 (132), H100 PCIe (114), A100 (108), and a small one (30)
SM_COUNTS = [30, 108, 114, 132]


def test_plan_needs_neither_triton_nor_a_gpu():
    source = open(plan.__file__).read()
    assert "import triton" not in source and "import torch" not in source


def test_warm_bits_stop_eight_bits_under_the_output():
    assert [plan.warm_bits(b) for b in (8, 11, 24, 53)] == [16, 19, 24, 24]  # bf16, float16, float32, float64
    assert plan.warm_steps(ALPHAS, 1, plan.warm_bits(8)) == [16, 106, 549]
    for w16, w24 in zip(plan.warm_steps(ALPHAS, 1, 16), plan.warm_steps(ALPHAS, 1, 24)):
        assert w16 < w24


def test_lin_warm_steps_scale_with_the_bits_and_keep_their_decay():
    """linear_scan's warm-up shrinks with the bits kept, and a decay of 0.878 still forgets within it."""
    assert [plan.lin_warm_steps(b, 16) for b in (16, 19, 24)] == [96, 112, 128]
    assert plan.lin_warm_steps() == plan.LIN_WARM_STEPS and plan.lin_warm_steps(16) == 86
    for bits in (16, 19, 24):
        assert 0.878 ** plan.lin_warm_steps(bits) <= 2.0 ** -bits < 0.878 ** (plan.lin_warm_steps(bits) - 1)


def test_warm_steps_forget_to_float32_resolution():
    w = plan.warm_steps(ALPHAS)
    assert w == [24, 158, 824]
    for a, n in zip(ALPHAS, w):
        assert (1 - a) ** n <= 2.0 ** -24 < (1 - a) ** (n - 1)
    assert plan.warm_steps(ALPHAS, 16) == [32, 160, 832]
    assert plan.warm_steps((1.0,)) == [0]  # h_t = x_t: nothing to remember
    assert plan.warm_steps((0.5, 0.0)) is None  # a state that never fades: no warm-up is long enough
    assert plan.warm_steps((2.5,)) is None


def test_tile_config_rejects_bad_shapes():
    with pytest.raises(ValueError, match="block"):
        plan.TileConfig(block=48)
    with pytest.raises(ValueError, match="stages"):
        plan.TileConfig(stages=0)
    with pytest.raises(ValueError, match="seg_stages"):
        plan.TileConfig(seg_stages=0)
    assert plan.TileConfig().seg_stages is None  # unset: segments keep ``stages``


def test_selective_forward_takes_two_warp_programs_tall_in_one_pass_short_in_segments():
    """``linear_scan``'s forward: 128 channels in two warps, 32 rows where that fills the GPU in one pass
    (B=16 T=2048 D=768 on 132 SMs: 192 warps), else 16 rows, cut into segments."""
    one_pass, segmented = plan.LIN_FWD
    assert (one_pass.block, one_pass.num_warps, one_pass.ct) == (128, 2, 32)
    assert (segmented.block, segmented.num_warps, segmented.ct) == (128, 2, 16)
    assert plan.choose(None, plan.LIN_FWD, 16, 768, 132) is one_pass
    assert plan.segments(one_pass, 16 * 768 // 128, 2048, 132) == (1, 2048)
    assert plan.choose(None, plan.LIN_FWD, 8, 256, 132) is segmented  # 8 x 2 x 2 = 32 warps: segments
    assert plan.segments(segmented, 8 * 256 // 128, 8192, 132)[0] > 1


@pytest.mark.parametrize("sms", SM_COUNTS)
def test_default_tiles_are_the_widest_that_fill_the_gpu(sms):
    """``choose`` counts warps: the wide tiles (128 channels a warp) wherever they alone give a warp
    per SM, else the narrow ones (64 channels a warp, two warps a program)."""
    wide, narrow = plan.EMA_FWD
    assert wide.block // wide.num_warps > narrow.block // narrow.num_warps

    def warps(cfg, B):
        return B * (768 // cfg.block) * cfg.num_warps

    assert plan.choose(None, plan.EMA_FWD, 4 * sms, 768, sms) is wide  # plenty of warps at either width
    B = -(-sms // warps(narrow, 1))  # the narrow tiles put a warp on every SM, the wide ones do not
    if warps(wide, B) < sms <= warps(narrow, B):
        assert plan.choose(None, plan.EMA_FWD, B, 768, sms) is narrow
        assert plan.ema_plan(narrow, B * 768 // narrow.block, 2048, ALPHAS, sms)[0] == 1  # one pass
    assert plan.choose(None, plan.EMA_FWD, 1, 768, 132) is narrow  # neither fills: the narrowest, in segments
    mine = plan.TileConfig()
    assert plan.choose(mine, plan.EMA_FWD, B, 768, sms) is mine


@pytest.mark.parametrize("sms", SM_COUNTS)
@pytest.mark.parametrize("T", [1, 63, 500, 4097, 65536, 1_000_000])
@pytest.mark.parametrize("programs", [1, 6, 48, 1024])
def test_segments_cover_time_in_whole_tiles(T, programs, sms):
    for cfg in (plan.TileConfig(), plan.TileConfig(ct=32, split=True), *plan.EMA_FWD, *plan.LIN_BWD):
        nseg, seglen = plan.segments(cfg, programs, T, sms)
        assert nseg >= 1 and (nseg - 1) * seglen < T <= nseg * seglen  # every step, no empty segment
        if nseg > 1:
            assert seglen % cfg.ct == 0
        ema = plan.ema_plan(cfg, programs, T, ALPHAS, sms)
        nseg, seglen, warm = ema
        assert (nseg - 1) * seglen < T <= nseg * seglen
        if warm is not None:  # warmed-up segments: each at least WARM_SEG_RATIO warm-ups long
            assert nseg > 1 and seglen >= plan.WARM_SEG_RATIO * max(warm) and seglen % cfg.ct == 0


@pytest.mark.parametrize("sms", SM_COUNTS)
def test_default_plan_warms_up_at_long_t_and_falls_back_to_two_passes(sms):
    cfg = plan.choose(None, plan.EMA_FWD, 1, 768, sms)
    nseg, seglen, warm = plan.ema_plan(cfg, 768 // cfg.block, 65536, ALPHAS, sms)
    assert warm == plan.warm_steps(ALPHAS, cfg.ct) and nseg > 1 and seglen >= plan.WARM_SEG_RATIO * max(warm)
    slow = (0.5, 1e-4)  # a timescale that remembers 166k steps, past T: no segment warms up
    assert plan.ema_plan(cfg, 768 // cfg.block, 65536, slow, sms)[2] is None
    no_warm = plan.TileConfig(ct=16, block=64, split=True, warmup=False, min_programs=8)
    assert plan.ema_plan(no_warm, 1, 65536, ALPHAS, sms)[2] is None  # warmup=False: two passes always


def test_enough_programs_run_in_one_pass():
    # B=64 T=512 D=768 on 132 SMs: 384 wide programs, one pass
    cfg = plan.choose(None, plan.EMA_FWD, 64, 768, 132)
    assert cfg is plan.EMA_FWD[0]
    assert plan.ema_plan(cfg, 64 * 768 // cfg.block, 512, ALPHAS, 132) == (1, 512, None)


@pytest.mark.parametrize("sms", SM_COUNTS)
@pytest.mark.parametrize("programs", [1, 2, 7, 16, 48, 100])
@pytest.mark.parametrize("per_sm", [plan.WARM_WARPS_PER_SM, plan.LIN_WARM_WARPS_PER_SM])
def test_warm_segments_stay_within_the_warps_asked_for(programs, per_sm, sms):
    # rounded down: a program past what the SMs hold would run beside another and hold the launch up
    for cfg in (*plan.EMA_FWD, *plan.EMA_BWD, *plan.LIN_FWD):
        got = plan.warm_plan(cfg, programs, 65536, 832, sms, per_sm)
        if got is None:
            continue
        nseg, seglen = got
        assert nseg > 1 and nseg * programs * cfg.num_warps <= per_sm * sms
        assert seglen >= plan.WARM_SEG_RATIO * 832 and seglen % cfg.ct == 0 and (nseg - 1) * seglen < 65536


def test_few_channels_put_one_two_warp_program_on_each_sm():
    # B=8 T=8192 D=256 on 132 SMs: 16 two-warp programs, so 8 segments of 1024 steps, 128 programs
    # (rounded up, and two warm-ups a segment, it was 5 of 1664: 80 programs, 1.455x the floor against
    # 1.333x on an H100)
    cfg = plan.choose(None, plan.EMA_FWD, 8, 256, 132)
    assert cfg.num_warps == 2
    assert plan.ema_plan(cfg, 8 * 256 // cfg.block, 8192, ALPHAS, 132) == (8, 1024, plan.warm_steps(ALPHAS, cfg.ct))
    # B=1 T=65536 D=1024: 8 programs, 16 segments (rounded up it was 17: 136 programs on 132 SMs)
    assert plan.ema_plan(cfg, 1024 // cfg.block, 65536, ALPHAS, 132)[:2] == (16, 4096)


def test_linear_scan_forward_warms_up_four_warps_an_sm():
    # B=4 T=8192 F=768: 24 two-warp programs of 16-row tiles, 11 segments of 752 steps (528 warps at most)
    cfg = plan.choose(None, plan.LIN_FWD, 4, 768, 132)
    assert cfg.num_warps == 2 and cfg.ct == 16
    programs = 4 * 768 // cfg.block
    assert plan.warm_plan(cfg, programs, 8192, plan.LIN_WARM_STEPS, 132, plan.LIN_WARM_WARPS_PER_SM) == (11, 752)


def test_first_segment_takes_the_steps_the_others_spend_warming_up():
    """Segments that warm up are shorter by the warm-up's cost over NSEG; the first, which has no warm-up,
    takes the rest: every segment's work (own steps plus cost times warm-up steps) is then at most the
    even cut's, the segments still tile T, and the later ones stay multiples of CT."""
    assert plan.first_segment(2048, 2, 1024, 576, 32, 0.5) == (896, 1152)  # the grid's T2048 shapes
    assert plan.first_segment(2048, 1, 2048, 576, 32, 0.5) == (2048, 2048)  # one segment
    assert plan.first_segment(2048, 2, 1024, 0, 32, 0.5) == (1024, 1024)  # nothing warms up
    assert plan.first_segment(2048, 2, 1024, 576, 32, 0.0) == (1024, 1024)
    assert plan.first_segment(65536, 64, 1024, 576, 32, 0.5) == (1024, 1024)  # no shorter multiple of CT
    for T in (1000, 2048, 4097, 8192, 65536):
        for nseg in (2, 3, 5, 8, 13):
            for warm in (96, 576, 832):
                for ct in (16, 32):
                    seglen = ((T + nseg - 1) // nseg + ct - 1) // ct * ct  # the even cut
                    if (T + seglen - 1) // seglen != nseg:
                        continue
                    rest, first = plan.first_segment(T, nseg, seglen, warm, ct, 0.5)
                    if (rest, first) == (seglen, seglen):  # the even cut (its last segment the short one)
                        continue
                    assert first + (nseg - 1) * rest == T and rest % ct == 0 and first >= rest
                    even = max(min(seglen, T), 0.5 * warm + seglen)
                    assert max(first, 0.5 * warm + rest) <= even
