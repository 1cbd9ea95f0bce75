"""Tokenizers: registry errors, round trips, save/load, and GPT-2's known ids."""

from __future__ import annotations

import json

import pytest

from emaprobe.data import (
    TOKENIZERS,
    GPT2Tokenizer,
    WordTokenizer,
    get_tokenizer,
    load_tokenizer,
    resolve_tokenizer,
    train_bpe,
)

TEXT = "The cat sat on the mat.\nA dog — naïve, 🙂 — ran 42 times!  Two  spaces\tand a tab.\n"


def test_unknown_tokenizer_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown tokenizer 'sentencepiece'; choose one of \['bpe', 'gpt2', 'word'\]"):
        get_tokenizer("sentencepiece")
    assert sorted(TOKENIZERS) == ["bpe", "gpt2", "word"]


def test_unknown_option_lists_valid_options():
    with pytest.raises(ValueError, match=r"tokenizer 'word' takes no option\(s\) \['vocab'\]; valid options"):
        get_tokenizer("word", vocab=10)


def test_missing_saved_tokenizer_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="emaprobe_tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a saved tokenizer folder"):
        resolve_tokenizer(tmp_path)


# ---- word ---------------------------------------------------------------------------


def test_word_tokenizer_counts_lines_and_round_trips(tmp_path):
    tok = WordTokenizer.build(["a b a\nc a", "b d"])
    # most frequent first, <eos> counted once per line: a=3, <eos>=3, b=2, c, d, then <unk>
    assert tok.words == ["a", "<eos>", "b", "c", "d", "<unk>"]
    assert tok.eot_id == 1 and tok.vocab_size == 6
    ids = tok.encode("a b\nzebra d\n")
    assert ids == [0, 2, 1, tok.unk_id, 4, 1]
    assert tok.decode(ids) == "a b\n<unk> d\n"
    assert tok.decode(tok.encode("a  b \n\n c")) == "a b\n\nc"
    tok.save(tmp_path / "w")
    back = load_tokenizer(tmp_path / "w")
    assert isinstance(back, WordTokenizer) and back.words == tok.words and back.fingerprint == tok.fingerprint


def test_word_max_vocab_keeps_specials_and_most_frequent():
    tok = WordTokenizer.build(["x x x y y z"], max_vocab=3)
    assert set(tok.words) == {"x", "<eos>", "<unk>"}
    assert tok.encode("y x") == [tok.unk_id, tok.ids["x"]]
    with pytest.raises(ValueError, match="max_vocab must be >= 2"):
        WordTokenizer.build(["x"], max_vocab=1)


def test_word_saved_vocab_with_bad_json_names_file(tmp_path):
    WordTokenizer.build(["a b"]).save(tmp_path)
    (tmp_path / "vocab.json").write_text('["a", "b"', encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab\.json: malformed JSON"):
        load_tokenizer(tmp_path)


def test_word_ptb_vocabulary_is_10000():
    tok = get_tokenizer("word")  # built from ptb:train
    assert tok.vocab_size == 10000
    assert tok.words[tok.eot_id] == "<eos>" and "<unk>" in tok.ids
    assert tok.encode("the company said") == [tok.ids["the"], tok.ids["company"], tok.ids["said"]]


# ---- bpe ----------------------------------------------------------------------------


@pytest.fixture
def small_corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    docs = [TEXT, "the theory of the thing", "mat cat hat that", "Über straße café"] * 5
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


def test_bpe_trains_round_trips_and_reloads(tmp_path, small_corpus):
    tok = train_bpe(str(small_corpus), vocab_size=300)
    assert 257 < tok.vocab_size <= 300
    for text in (TEXT, "unseen ☃ text, with <odd> bytes \x00 and  spaces "):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert all(0 <= i < tok.vocab_size for i in ids)
    # learned merges make the training text shorter than its bytes
    assert len(tok.encode("the theory of the thing")) < len("the theory of the thing")
    # text spelling the marker is text, not the document separator
    assert tok.eot_id not in tok.encode("before <|endoftext|> after")
    tok.save(tmp_path / "bpe")
    back = load_tokenizer(tmp_path / "bpe")
    assert back.encode(TEXT) == tok.encode(TEXT) and back.eot_id == tok.eot_id
    assert back.fingerprint == tok.fingerprint


def test_bpe_needs_a_corpus_and_a_sane_vocab(small_corpus):
    with pytest.raises(ValueError, match="give corpus=SPEC"):
        get_tokenizer("bpe")
    with pytest.raises(ValueError, match="vocab_size must be >= 257"):
        get_tokenizer("bpe", corpus=str(small_corpus), vocab_size=100)


# ---- gpt2 ---------------------------------------------------------------------------


def test_gpt2_known_ids_and_round_trip(shared_data, tmp_path):
    tok = get_tokenizer("gpt2")
    assert tok.vocab_size == 50257 and tok.eot_id == 50256
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the") == [262]
    assert tok.encode("<|endoftext|>") != [50256]
    assert tok.decode(tok.encode(TEXT)) == TEXT
    tok.save(tmp_path / "g")
    assert (tmp_path / "g" / "gpt2.tiktoken").read_bytes() == (shared_data / "gpt2" / "gpt2.tiktoken").read_bytes()
    back = load_tokenizer(tmp_path / "g")
    assert isinstance(back, GPT2Tokenizer) and back.encode(TEXT) == tok.encode(TEXT)


def test_gpt2_ranks_from_env_var_and_clear_errors(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("EMAPROBE_GPT2_RANKS", str(shared_data / "gpt2" / "gpt2.tiktoken"))
    monkeypatch.delenv("EMAPROBE_DATA")
    assert get_tokenizer("gpt2").encode("Hello world") == [15496, 995]
    monkeypatch.delenv("EMAPROBE_GPT2_RANKS")
    with pytest.raises(FileNotFoundError, match="GPT-2 ranks file not found: pass ranks_path"):
        get_tokenizer("gpt2")
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("SGVsbG8= 0\nnot-base64!! 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.tiktoken:2: not a tiktoken ranks line"):
        get_tokenizer("gpt2", ranks_path=bad)
    short = tmp_path / "short.tiktoken"
    short.write_text("SGVsbG8= 0\n", encoding="utf-8")
    with pytest.raises(ValueError, match="GPT-2's file has 50256"):
        get_tokenizer("gpt2", ranks_path=short)


def test_word_literal_eos_is_text_not_a_document_end():
    # three "<eos>" words in the text and one line: only the line counts, so z (2) ranks first
    tok = WordTokenizer.build(["<eos> z <eos> z <eos>"])
    assert tok.words == ["z", "<eos>", "<unk>"]
    assert tok.encode("z <eos> z") == [tok.ids["z"], tok.unk_id, tok.ids["z"]]
    assert tok.encode("z\nz") == [tok.ids["z"], tok.eot_id, tok.ids["z"]]  # a newline still is one
