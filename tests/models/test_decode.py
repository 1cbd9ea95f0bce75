"""Generation's two steps give the same tokens, and GPT stops at its block instead of sliding."""

from __future__ import annotations

import warnings

import pytest
import torch

from emaprobe.models import GPT, SPEN, ContextLimitError, GPTConfig, SPENConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")
V = 23


def small_spen(mixer: str) -> SPEN:
    torch.manual_seed(0)
    cfg = SPENConfig(vocab_size=V, d_model=16, n_layer=2, d_bottleneck=12, d_ff=32, key_dim=4, mixer_rank=4,
                     mixer=mixer, init_std=0.3)
    return SPEN(cfg).eval()


def test_compiled_decode_step_gives_the_eager_tokens():
    """torch.compile (inductor on CPU) of the per-token step: identical greedy tokens, twice over one
    compiled graph (the second call reuses the state buffers), for fixed, input-dependent and matrix states."""
    for mixer in ("ema", "selective", "gla"):
        model = small_spen(mixer)
        for B, T in ((2, 9), (2, 5)):
            idx = torch.randint(0, V, (B, T))
            eager = torch.stack(list(model.generate(idx, 12, temperature=0)), 1)  # (B, 12)
            compiled = torch.stack(list(model.generate(idx, 12, temperature=0, compile=True)), 1)
            assert torch.equal(eager, compiled), mixer


def test_compile_on_a_growing_state_warns_and_steps_eagerly():
    model = small_spen("attention")
    idx = torch.randint(0, V, (1, 6))
    eager = torch.stack(list(model.generate(idx, 5, temperature=0)), 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        same = torch.stack(list(model.generate(idx, 5, temperature=0, compile=True)), 1)
    assert torch.equal(eager, same)
    assert any("steps eagerly" in str(w.message) for w in caught)


@pytest.mark.parametrize("kind", ["spen", "gpt"])
def test_long_prompt_prefill_in_chunks_matches_one_pass(kind, monkeypatch):
    import emaprobe.models.common as common

    torch.manual_seed(0)
    model = small_spen("ema") if kind == "spen" else GPT(GPTConfig(vocab_size=V, block_size=64, d_model=16, n_layer=2,
                                                                  n_head=2, d_ff=32, init_std=0.3)).eval()
    idx = torch.randint(0, V, (2, 40))
    full, _ = model(idx)
    monkeypatch.setattr(common, "PREFILL_CHUNK", 7)  # 40 = 5 x 7 + 5: an uneven last chunk
    last, state = model._prefill(idx)
    assert last.shape == (2, 1, V)
    torch.testing.assert_close(last, full[:, -1:], rtol=1e-5, atol=1e-5)
    step, _ = model._advance(idx[:, 0], state)  # the state carries on from all 40 positions
    torch.testing.assert_close(step, model(torch.cat([idx, idx[:, :1]], 1))[0][:, -1:], rtol=1e-5, atol=1e-5)


def test_gpt_generation_fits_the_block_and_never_slides():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, block_size=24, d_model=16, n_layer=2, n_head=2, d_ff=32, init_std=0.3)).eval()
    prompt = torch.randint(0, V, (2, 30))
    toks = list(model.generate(prompt, 10, temperature=0))
    # the prompt keeps its last 24 - 9 = 15 tokens, so all 10 new ones fit in one window
    seq = prompt[:, -15:]
    for t in toks:
        assert seq.shape[1] <= 24
        logits, _ = model(seq)
        assert torch.equal(logits[:, -1].argmax(-1), t)
        seq = torch.cat([seq, t[:, None]], 1)
    assert len(list(model.generate(prompt, 24, temperature=0))) == 24  # exactly the block: one prompt token
    with pytest.raises(ContextLimitError, match="25 new tokens do not fit in the context of 24"):
        next(model.generate(prompt, 25, temperature=0))


def test_gpt_compiled_generate_gives_the_eager_tokens():
    """GPT's preallocated KV cache is a fixed-shape state: compile=True compiles (no warning) and gives
    the eager greedy tokens, twice over one graph, up to the last slot of the block."""
    from emaprobe.models import build_model

    torch.manual_seed(0)
    model = build_model("gpt-tiny").eval()
    assert model.static_state
    bs = model.config.block_size
    for B, T, n in ((2, 9, 12), (2, 300, 20)):  # the second prompt is trimmed to bs - 19 tokens
        idx = torch.randint(0, model.config.vocab_size, (B, T))
        eager = torch.stack(list(model.generate(idx, n, temperature=0)), 1)  # (B, n)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compiled = torch.stack(list(model.generate(idx, n, temperature=0, compile=True)), 1)
        assert not any("steps eagerly" in str(w.message) for w in caught)
        assert torch.equal(eager, compiled), (B, T)
        seq = torch.cat([idx[:, -(bs - n + 1):], eager[:, :-1]], 1)  # the full-sequence forward's picks
        assert seq.shape[1] <= bs
        assert torch.equal(model(seq)[0][:, -n:].argmax(-1), eager)
    with pytest.raises(ContextLimitError, match=f"{bs + 1} new tokens do not fit"):
        next(model.generate(idx, bs + 1, temperature=0, compile=True))


@pytest.mark.parametrize("temperature", [1e-300, 1e-37, 1e-30])
def test_a_tiny_temperature_samples_the_argmax_instead_of_failing(temperature):
    """Logits divided by a tiny temperature overflowed to inf (a NaN softmax, then multinomial's error);
    with each row's max subtracted first the others go to -inf at most, and below float32's smallest
    normal number the temperature is greedy."""
    from emaprobe.models.common import sample_next

    logits = torch.randn(4, V, generator=torch.Generator().manual_seed(0)) * 100  # (B, V)
    for top_k in (None, 5):
        assert torch.equal(sample_next(logits, temperature, top_k), logits.argmax(-1))


def test_gpt_prompt_window_is_what_generate_keeps():
    model = GPT(GPTConfig(vocab_size=V, block_size=24, d_model=16, n_layer=1, n_head=2, d_ff=32))
    assert [model.prompt_window(n) for n in (0, 1, 10, 24)] == [24, 24, 15, 1]
    assert small_spen("ema").prompt_window(10) is None
