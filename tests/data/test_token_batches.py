"""TokenData slicing across shards, seeded random batches, and the sequential evaluation order."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emaprobe.data import TokenData, WordTokenizer, eval_batches, get_batch, prepare

N_WORDS = 50


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A stream of 999 tokens spread over shards of 64, and the same stream in memory."""
    tmp = tmp_path_factory.mktemp("sharded")
    tok = WordTokenizer([f"w{i}" for i in range(N_WORDS)] + ["<unk>", "<eos>"])
    rng = np.random.default_rng(0)
    lines = [" ".join(f"w{i}" for i in rng.integers(0, N_WORDS, size=n)) for n in rng.integers(1, 20, size=100)]
    (tmp / "c.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepare(str(tmp / "c.txt"), tok, tmp / "out", workers=1, shard_tokens=64, quiet=True)
    data = TokenData(tmp / "out")
    stream = np.array(tok.encode("\n".join(lines)) + [tok.eot_id], dtype=np.uint16)
    return data, stream


def test_slicing_crosses_shard_boundaries(sharded):
    data, stream = sharded
    assert len(data.shards) > 10 and len(data) == len(stream)
    assert np.array_equal(data[:], stream)
    for start, stop in [(0, 1), (60, 70), (63, 64), (64, 65), (100, 400), (len(stream) - 5, len(stream))]:
        assert np.array_equal(data[start:stop], stream[start:stop])
    assert data[-1] == stream[-1] and data[64] == stream[64]
    assert data[5:2].size == 0
    with pytest.raises(IndexError):
        data[len(stream)]
    with pytest.raises(ValueError, match="step 1 only"):
        data[::2]


def test_get_batch_is_seeded_shifted_and_shard_independent(sharded):
    data, stream = sharded
    x, y = get_batch(data, 8, 16, torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    x2, y2 = get_batch(stream, 8, 16, torch.Generator().manual_seed(3))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = get_batch(data, 8, 16, torch.Generator().manual_seed(4))
    assert not torch.equal(x, x3)
    full = torch.from_numpy(stream.astype(np.int64))
    for row in x:  # every row is a real window of the stream
        starts = [s for s in range(len(full) - 16) if torch.equal(full[s : s + 16], row)]
        assert starts


def test_get_batch_reaches_both_ends_and_rejects_short_streams():
    stream = np.arange(10, dtype=np.uint16)
    seen = torch.cat([get_batch(stream, 64, 4, torch.Generator().manual_seed(s))[1] for s in range(4)])
    assert seen.min() == 1 and seen.max() == 9  # first and last targets both drawn
    with pytest.raises(ValueError, match="too short for windows of seq_len \\+ 1 = 11"):
        get_batch(stream, 2, 10, torch.Generator())


@pytest.mark.parametrize("batch_size,seq_len", [(4, 16), (3, 7), (1, 998), (5, 1000)])
def test_eval_batches_cover_every_target_once_in_order(sharded, batch_size, seq_len):
    data, stream = sharded
    batches = list(eval_batches(data, batch_size, seq_len))
    xs = torch.cat([x.reshape(-1) for x, _ in batches])
    ys = torch.cat([y.reshape(-1) for _, y in batches])
    full = torch.from_numpy(stream.astype(np.int64))
    assert torch.equal(xs, full[:-1]) and torch.equal(ys, full[1:])
    assert all(x.shape == y.shape and x.shape[0] <= batch_size for x, y in batches)
    assert all(x.shape[1] == seq_len for x, _ in batches[:-1])


def test_eval_batches_max_tokens_caps_targets(sharded):
    data, _ = sharded
    assert sum(y.numel() for _, y in eval_batches(data, 4, 16, max_tokens=100)) == 100


def test_eval_batches_refuses_a_negative_max_tokens():
    with pytest.raises(ValueError, match="max_tokens must be >= 0"):
        list(eval_batches(np.arange(10), 2, 3, max_tokens=-5))
    assert list(eval_batches(np.arange(10), 2, 3, max_tokens=0)) == []


@pytest.mark.parametrize(
    "edit,field",
    [
        (lambda m: m.pop("spec"), "'spec'"),
        (lambda m: m["tokenizer"].pop("dir"), "'tokenizer.dir'"),
        (lambda m: m["shards"][0].pop("file"), "shards[0] has no 'file'"),
    ],
)
def test_hand_edited_manifest_names_the_missing_field(tmp_path, edit, field):
    (tmp_path / "c.txt").write_text("a b\n", encoding="utf-8")
    prepare(str(tmp_path / "c.txt"), WordTokenizer(["a", "b", "<unk>", "<eos>"]), tmp_path / "o", workers=1, quiet=True)
    path = tmp_path / "o" / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError) as info:
        TokenData(tmp_path / "o")
    assert str(info.value).startswith(f"{path}: ") and field in str(info.value)
