"""save_pretrained / from_pretrained: identical logits after a round trip, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from emaprobe.layers import MIXERS
from emaprobe.models import GPT, SPEN, build_model, from_pretrained

TINY = dict(vocab_size=29, d_model=16, n_layer=2, n_head=2, d_ff=32)


def _trained_a_little(model):
    # move the weights off their initial values (incl. the decays) so that a loader
    # which silently re-initialised anything would be caught
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("mixer", sorted(MIXERS))
def test_spen_round_trip_gives_identical_logits(tmp_path, mixer):
    model = _trained_a_little(build_model("spen-tiny", **TINY, d_bottleneck=8, mixer=mixer, predictor="attention"))
    idx = torch.randint(0, 29, (2, 9))
    before, _ = model(idx)
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["kind"] == "spen" and meta["config"]["mixer"] == mixer
    loaded = from_pretrained(tmp_path / "ckpt").eval()
    assert isinstance(loaded, SPEN) and loaded.config == model.config
    after, _ = loaded(idx)
    assert torch.equal(before, after)


def test_gpt_round_trip_gives_identical_logits(tmp_path):
    model = _trained_a_little(build_model("gpt-tiny", **TINY, block_size=16))
    idx = torch.randint(0, 29, (2, 9))
    before, _ = model(idx)
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path)
    assert isinstance(loaded, GPT) and loaded.config == model.config
    assert loaded.tok_emb.weight.data_ptr() != model.tok_emb.weight.data_ptr()
    assert torch.equal(before, loaded(idx)[0])


def test_save_leaves_no_temporary_files_and_overwrites(tmp_path):
    model = build_model("spen-tiny", **TINY, d_bottleneck=8)
    model.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_loading_bad_folders_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json does not exist"):
        from_pretrained(tmp_path)
    model = build_model("gpt-tiny", **TINY, block_size=16)
    model.save_pretrained(tmp_path)
    cfg = tmp_path / "config.json"
    good = cfg.read_text()

    cfg.write_text("{not json")
    with pytest.raises(ValueError, match="config.json: malformed JSON"):
        from_pretrained(tmp_path)

    meta = json.loads(good)
    meta["kind"] = "mamba"
    cfg.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"unknown model kind 'mamba'; choose one of \['gpt', 'spen'\]"):
        from_pretrained(tmp_path)

    meta = json.loads(good)
    meta["config"]["n_layers"] = 3
    cfg.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['n_layers'\]"):
        from_pretrained(tmp_path)

    meta = json.loads(good)
    meta["config"]["n_layer"] = 3  # the weights hold two blocks
    cfg.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="weights do not match gpt config; missing"):
        from_pretrained(tmp_path)

    cfg.write_text(good)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="model.safetensors: cannot read safetensors"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", ["spen-tiny", "gpt-tiny"])
def test_round_trip_keeps_the_saved_dtype(tmp_path, name, dtype):
    # from_pretrained built a float32 model and load_state_dict cast the weights into it silently
    model = _trained_a_little(build_model(name, **TINY)).to(dtype)
    idx = torch.randint(0, 29, (2, 9))
    before, _ = model(idx)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = from_pretrained(tmp_path / "ckpt").eval()
    assert {p.dtype for p in loaded.parameters()} == {dtype}
    after, _ = loaded(idx)
    assert after.dtype == before.dtype and torch.equal(before, after)


@pytest.mark.parametrize("name", ["spen-tiny", "gpt-tiny"])
def test_an_empty_batch_gives_empty_logits(name):
    # the id range check took min() of an empty tensor
    model = build_model(name, **TINY).eval()
    logits, _ = model(torch.zeros(0, 5, dtype=torch.long))
    assert logits.shape == (0, 5, 29)
