"""The GPT baseline: KV-cache step mode = parallel, block size, generation, sizes."""

from __future__ import annotations

import pytest
import torch

from emaprobe.models import GPT, ContextLimitError, GPTConfig, build_model

V = 41


def small_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=V, block_size=24, d_model=16, n_layer=2, n_head=2, d_ff=32, init_std=0.3, **kw)
    return GPT(cfg).eval()


def test_gpt_step_equals_parallel():
    model = small_gpt()
    idx = torch.randint(0, V, (2, 19))
    full, state = model(idx)
    assert full.shape == (2, 19, V)
    assert len(state) == 2 and state[0][0].shape == (2, 2, 19, 8)
    st, steps = None, []
    for t in range(19):
        logits, st = model(idx[:, t : t + 1], st)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)
    a, st = model(idx[:, :7])
    b, _ = model(idx[:, 7:], st)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-4, atol=1e-4)


def test_gpt_is_causal():
    model = small_gpt()
    idx = torch.randint(0, V, (1, 12))
    a, _ = model(idx)
    idx2 = idx.clone()
    idx2[0, 8] = (idx[0, 8] + 1) % V
    b, _ = model(idx2)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert (a[:, 8] - b[:, 8]).abs().max() > 1e-4


def test_gpt_gradients_reach_every_parameter():
    model = small_gpt(dropout=0.1).train()
    idx = torch.randint(0, V, (2, 10))
    logits, _ = model(idx)
    torch.nn.functional.cross_entropy(logits.reshape(-1, V), idx.reshape(-1)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_block_size_is_enforced():
    model = small_gpt()
    with pytest.raises(ContextLimitError, match="exceed block_size=24"):
        model(torch.zeros(1, 25, dtype=torch.long))
    _, st = model(torch.zeros(1, 20, dtype=torch.long))
    with pytest.raises(ValueError, match=r"20 cached \+ 5 new"):
        model(torch.zeros(1, 5, dtype=torch.long), st)
    # generation past the block: tests/models/test_decode.py


def test_gpt_124m_is_gpt2_small():
    with torch.device("meta"):
        model = build_model("gpt-124m")
    assert abs(model.num_params() - 124_439_808) < 1e5  # GPT-2 small with tied head


def test_bad_configs_fail_clearly():
    with pytest.raises(ValueError, match="not divisible by n_head"):
        GPTConfig(d_model=10, n_head=4)
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        GPTConfig(block_size=0)
    with pytest.raises(ValueError, match="d_model must be a positive integer, got 16.5"):
        GPTConfig(d_model=16.5, n_head=1)


def test_gpt_backward_through_three_stateful_chunks_equals_one_call():
    """Each continuation writes the KV cache that the previous chunk's attention saved for its backward:
    with a graph recorded that write must not be in place (the third chunk's used to void the first's)."""
    model = small_gpt()
    idx = torch.randint(0, V, (2, 12))
    state, outs = None, []
    for lo, hi in ((0, 4), (4, 5), (5, 9), (9, 12)):
        out, state = model(idx[:, lo:hi], state)
        outs.append(out)
    torch.cat(outs, 1).pow(2).mean().backward()
    chunked = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(idx)[0].pow(2).mean().backward()
    for got, p in zip(chunked, model.parameters(), strict=True):
        torch.testing.assert_close(got, p.grad, rtol=1e-4, atol=1e-6)


def test_gpt_fixed_cache_step_vs_full_sequence_float64():
    """Tokens fed one at a time through the preallocated cache give the full-sequence logits
    (float64), every step keeps the (B, nh, block_size, hd) buffers and the input state's n."""
    model = small_gpt().double()
    idx = torch.randint(0, V, (2, 24))  # the whole block: the last step fills the last slot
    full, _ = model(idx)
    st, steps = None, []
    for t in range(24):
        logits, new = model(idx[:, t : t + 1], st)
        steps.append(logits)
        if t > 0:
            k, v, n = new[0]
            assert k.shape == v.shape == (2, 2, 24, 8) and n.shape == () and int(n) == t + 1
            n_in = st[0][2]  # the state passed in still names its own length
            assert (st[0][0].shape[2] if n_in is None else int(n_in)) == t
        st = new
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-12, atol=1e-12)
    # a prompt chunk after a chunk: the (k, v, None) of the first moves into block_size buffers
    a, st = model(idx[:, :7])
    assert st[0][2] is None and st[0][0].shape[2] == 7
    b, st = model(idx[:, 7:20], st)
    c, _ = model(idx[:, 20:], st)
    torch.testing.assert_close(torch.cat([a, b, c], 1), full, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(k, v, n\) KV cache"):
        model(idx[:, :1], [(st[0][0], st[0][1])] * 2)


def test_gpt_fixed_cache_keeps_the_training_path():
    """Without a state the forward is the plain is_causal SDPA and returns the keys as they are."""
    model = small_gpt()
    idx = torch.randint(0, V, (2, 11))
    logits, st = model(idx)
    blk = model.blocks[0]
    x = model.tok_emb(idx) + model.pos_emb(torch.arange(11))
    h = blk.ln1(x)
    q, k, v = blk.attn.qkv(h).view(2, 11, 3, 2, 8).permute(2, 0, 3, 1, 4)
    assert torch.equal(st[0][0], k) and torch.equal(st[0][1], v) and st[0][2] is None
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    a, _ = blk.attn(h)
    assert torch.equal(a, blk.attn.proj(y.transpose(1, 2).reshape(2, 11, 16)))
