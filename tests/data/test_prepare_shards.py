"""prepare: multiprocess shards whose text is the input, right counts, atomic folders; load_split."""

from __future__ import annotations

import importlib
import json
import lzma
import os

import numpy as np
import pytest

from emaprobe.data import TokenData, WordTokenizer, iter_documents, load_split, prepare, train_bpe

DOCS = [
    "Alpha beta gamma.\nSecond line of the first document.",
    "Ünïcödé text — with 🙂 emoji and\ttabs.",
    "short",
    "The quick brown fox jumps over the lazy dog. " * 30,
] * 6


def write_corpus(folder, docs=DOCS, split=2):
    folder.mkdir(parents=True, exist_ok=True)
    half = len(docs) // split
    (folder / "part-0.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:half]), encoding="utf-8")
    with lzma.open(folder / "part-1.jsonl.xz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs[half:])
    return folder


def split_documents(stream: np.ndarray, eot: int) -> list[np.ndarray]:
    assert stream[-1] == eot
    cuts = np.flatnonzero(stream == eot)
    return np.split(stream, cuts + 1)[:-1]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    corpus = write_corpus(tmp_path_factory.mktemp("bpe-corpus"))
    return train_bpe(str(corpus), vocab_size=320)


def test_prepare_with_two_workers_decodes_to_the_input(tmp_path, bpe):
    corpus = write_corpus(tmp_path / "corpus")
    manifest = prepare(str(corpus), bpe, tmp_path / "out", workers=2, shard_tokens=500, quiet=True)
    data = TokenData(tmp_path / "out")
    stream = data[:]
    docs = split_documents(stream, data.tokenizer.eot_id)
    assert [data.tokenizer.decode(d[:-1].tolist()) for d in docs] == DOCS
    assert manifest["n_documents"] == data.n_documents == len(DOCS)
    assert manifest["n_tokens"] == len(data) == sum(len(bpe.encode(d)) + 1 for d in DOCS)
    assert manifest["n_bytes"] == sum(len(d.encode("utf-8")) + 1 for d in DOCS)
    assert data.bytes_per_token == pytest.approx(manifest["n_bytes"] / manifest["n_tokens"])
    assert manifest["dtype"] == "uint16" and data.dtype == np.uint16
    assert len(manifest["shards"]) == -(-len(data) // 500) > 1
    assert all(s["n_tokens"] == 500 for s in manifest["shards"][:-1])
    assert manifest["run"]["workers"] == 2 and "git_sha" in manifest["run"]
    assert data.tokenizer.fingerprint == bpe.fingerprint == manifest["tokenizer"]["fingerprint"]
    # one process writes the same bytes as two
    prepare(str(corpus), bpe, tmp_path / "one", workers=1, shard_tokens=500, quiet=True)
    assert np.array_equal(TokenData(tmp_path / "one")[:], stream)
    assert sorted(os.listdir(tmp_path)) == ["corpus", "one", "out"]


def test_large_vocab_uses_uint32(tmp_path):
    words = [f"w{i}" for i in range(70_000)] + ["<unk>", "<eos>"]
    tok = WordTokenizer(words)
    (tmp_path / "c.txt").write_text("w69999 w1 w65536\n\nw0 nope\n", encoding="utf-8")
    manifest = prepare(str(tmp_path / "c.txt"), tok, tmp_path / "out", workers=1, quiet=True)
    data = TokenData(tmp_path / "out")
    assert manifest["dtype"] == "uint32"
    assert data[:].tolist() == [69999, 1, 65536, tok.eot_id, 0, tok.unk_id, tok.eot_id]


def test_error_mid_corpus_leaves_no_files(tmp_path, bpe):
    corpus = write_corpus(tmp_path / "corpus")
    with lzma.open(corpus / "part-2.jsonl.xz", "wt", encoding="utf-8") as f:
        f.write('{"text": "fine"}\n{"txt": "typo"}\n')
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ValueError, match=r"part-2\.jsonl\.xz:2: no 'text' field"):
        prepare(str(corpus), bpe, tmp_path / "out", workers=2, shard_tokens=100, quiet=True)
    assert sorted(os.listdir(tmp_path)) == before  # no out/, no hidden partial folder


def test_existing_folders_are_protected(tmp_path, bpe):
    corpus = write_corpus(tmp_path / "corpus")
    prepare(str(corpus), bpe, tmp_path / "out", workers=1, quiet=True)
    with pytest.raises(ValueError, match="already holds a prepared corpus; pass overwrite=True"):
        prepare(str(corpus), bpe, tmp_path / "out", workers=1, quiet=True)
    (tmp_path / "c2.txt").write_text("just one document\n", encoding="utf-8")
    manifest = prepare(str(tmp_path / "c2.txt"), bpe, tmp_path / "out", workers=1, overwrite=True, quiet=True)
    assert manifest["n_documents"] == 1 and TokenData(tmp_path / "out").n_documents == 1
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ValueError, match="non-empty folder that is not a prepared corpus"):
        prepare(str(corpus), bpe, tmp_path / "busy", workers=1, quiet=True)
    assert (tmp_path / "busy" / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_damaged_folders_fail_clearly(tmp_path, bpe):
    corpus = write_corpus(tmp_path / "corpus")
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        TokenData(corpus)
    prepare(str(corpus), bpe, tmp_path / "out", workers=1, quiet=True)
    shard = tmp_path / "out" / "tokens_00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ValueError, match=r"tokens_00000\.bin: .* bytes, but the manifest says"):
        TokenData(tmp_path / "out")


def test_load_split_in_memory_equals_prepared_and_caches(tmp_path, bpe):
    corpus = write_corpus(tmp_path / "corpus")
    mem = load_split(str(corpus), bpe)
    cached = load_split(str(corpus), bpe, cache_dir=tmp_path / "cache")
    assert np.array_equal(mem[:], cached[:]) and mem.n_bytes == cached.n_bytes
    assert cached.path is not None and cached.path.parent == tmp_path / "cache"
    stamp = (cached.path / "manifest.json").stat().st_mtime_ns
    again = load_split(str(corpus), bpe, cache_dir=tmp_path / "cache")
    assert again.path == cached.path and (again.path / "manifest.json").stat().st_mtime_ns == stamp
    # editing the corpus changes the cache key
    (corpus / "part-0.jsonl").write_text(json.dumps({"text": "changed"}) + "\n", encoding="utf-8")
    changed = load_split(str(corpus), bpe, cache_dir=tmp_path / "cache")
    assert changed.path != cached.path and changed.n_documents < cached.n_documents


def test_ptb_word_level_matches_the_mikolov_setup():
    train = load_split("ptb:train", "word")
    assert train.tokenizer.vocab_size == 10000
    assert len(train) == 929_589 and train.n_documents == 42_068
    last = list(iter_documents("ptb:train"))[-1]
    assert train.decode(len(train) - len(last.split()) - 1) == last + "\n"  # the final <eos> is a newline
    assert len(load_split("ptb:valid", train.tokenizer)) == 73_760
    assert len(load_split("ptb:test", train.tokenizer)) == 82_430
    assert 5.0 < train.bytes_per_token < 6.0


def test_concurrent_cache_fill_keeps_the_first_and_leaves_no_debris(tmp_path, bpe, monkeypatch):
    prep = importlib.import_module("emaprobe.data.prepare")  # the package re-exports a function of that name

    corpus = write_corpus(tmp_path / "corpus")
    original = prep._prepare_into
    calls = []

    def other_rank_finishes_first(folder, spec, tok, *args):
        manifest = original(folder, spec, tok, *args)
        if not calls:  # while this call is about to swap, another process fills the same cache folder
            calls.append(folder)
            prep.load_split(spec, tok, cache_dir=tmp_path / "cache")
        return manifest

    monkeypatch.setattr(prep, "_prepare_into", other_rank_finishes_first)
    data = prep.load_split(str(corpus), bpe, cache_dir=tmp_path / "cache")
    assert calls and data.n_documents == len(DOCS)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [data.path.name]


def test_interrupt_mid_write_leaves_no_files(tmp_path, bpe, monkeypatch):
    prep = importlib.import_module("emaprobe.data.prepare")
    corpus = write_corpus(tmp_path / "corpus")
    written = []

    def interrupted_write(self, ids):
        if written:
            raise KeyboardInterrupt
        written.append(len(ids))
        original_write(self, ids)

    original_write = prep._ShardWriter.write
    monkeypatch.setattr(prep, "CHUNK_CHARS", 200)  # many chunks, so the interrupt lands mid-corpus
    monkeypatch.setattr(prep._ShardWriter, "write", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(str(corpus), bpe, tmp_path / "out", workers=2, quiet=True)
    assert written and sorted(os.listdir(tmp_path)) == ["corpus"]
