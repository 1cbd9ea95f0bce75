"""``emaprobe data prepare`` and ``emaprobe data info`` through the command-line entry point."""

from __future__ import annotations

import json

import pytest

from emaprobe.cli import main
from emaprobe.data import TokenData


def test_prepare_then_info_then_reuse_tokenizer(tmp_path, capsys):
    (tmp_path / "train.txt").write_text("a b c\na b\n\nc c d\n", encoding="utf-8")
    (tmp_path / "valid.txt").write_text("a d e\n", encoding="utf-8")
    argv = ["data", "prepare", "--data", str(tmp_path / "train.txt"), "--tokenizer", "word"]
    assert main([*argv, "--out", str(tmp_path / "tr"), "--workers", "1", "--quiet"]) == 0
    assert "11 tokens (uint16) in 1 shard(s), 2 documents, 16 bytes" in capsys.readouterr().out
    saved = str(tmp_path / "tr" / "tokenizer")
    argv = ["data", "prepare", "--data", str(tmp_path / "valid.txt"), "--tokenizer", saved]
    assert main([*argv, "--out", str(tmp_path / "va"), "--quiet"]) == 0
    valid = TokenData(tmp_path / "va")
    assert valid.decode() == "a d <unk>\n"  # the train vocabulary has no 'e'
    assert main(["data", "info", str(tmp_path / "tr"), "--show", "7"]) == 0
    out = capsys.readouterr().out
    assert "TokenData(11 tokens, 2 documents" in out and "a b c\na b\n" in out
    assert main(["data", "info", str(tmp_path / "va"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_tokens"] == 4


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--tokenizer", "spm"], "unknown tokenizer 'spm'; choose one of ['bpe', 'gpt2', 'word']"),
        (["--tokenizer", "bpe", "--vocab-size", "10"], "vocab_size must be >= 257"),
    ],
)
def test_prepare_bad_arguments_exit_2_with_one_line(tmp_path, capsys, extra, message):
    (tmp_path / "c.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    code = main(["data", "prepare", "--data", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_prepare_corrupt_corpus_exits_2_naming_the_file(tmp_path, capsys):
    (tmp_path / "c.jsonl.xz").write_bytes(b"\xfd7zXZ\x00 broken")
    code = main(["data", "prepare", "--data", str(tmp_path / "c.jsonl.xz"), "--tokenizer", "word",
                 "--tokenizer-corpus", "ptb:valid", "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2 and "c.jsonl.xz: corrupt" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl.xz"]


def test_info_on_a_non_prepared_folder_exits_2(tmp_path, capsys):
    assert main(["data", "info", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
