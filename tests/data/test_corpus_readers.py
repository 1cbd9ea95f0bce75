"""Data specs and corpus readers: every format reads, every bad input names its file and line."""

from __future__ import annotations

import gzip
import json
import lzma
from pathlib import Path

import pytest

from emaprobe.data import iter_documents, resolve_files

DOCS = ["First document.\nIt has two lines.", "Second: ünïcödé, emoji 🙂.", "third"]


def write_jsonl(path: Path, docs: list[str], opener=open) -> Path:
    lines = "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs))
    with opener(path, "wt", encoding="utf-8") as f:
        f.write(lines)
    return path


@pytest.mark.parametrize(
    "name,opener",
    [("c.jsonl", open), ("c.jsonl.xz", lzma.open), ("c.jsonl.gz", gzip.open), ("c4-train.00000.json.gz", gzip.open)],
)
def test_jsonl_formats_read_text_field(tmp_path, name, opener):
    path = write_jsonl(tmp_path / name, DOCS, opener)
    assert list(iter_documents(str(path))) == DOCS


def test_jsonl_skips_blank_lines_and_empty_documents(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "   "}\n{"text": ""}\n{"text": "b", "url": "x"}\n', encoding="utf-8")
    assert list(iter_documents(str(path))) == ["a", "b"]


@pytest.mark.parametrize("name,opener", [("c.txt", open), ("c.txt.xz", lzma.open)])
def test_text_file_documents_are_blank_line_blocks(tmp_path, name, opener):
    with opener(tmp_path / name, "wt", encoding="utf-8") as f:
        f.write("\n\nline one\nline two\n\n  \n\t\nnext block\r\n\nlast\n")
    assert list(iter_documents(str(tmp_path / name))) == ["line one\nline two", "next block", "last"]


def test_folder_reads_supported_files_in_sorted_order(tmp_path):
    write_jsonl(tmp_path / "b.jsonl.xz", ["from b"], lzma.open)
    write_jsonl(tmp_path / "a.jsonl", ["from a"])
    (tmp_path / "c.txt").write_text("from c\n", encoding="utf-8")
    (tmp_path / "README.md").write_text("not a corpus file\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "sub" / "z.jsonl", ["nested, not read"])
    assert list(iter_documents(str(tmp_path))) == ["from a", "from b", "from c"]


def test_glob_reads_matching_files_sorted(tmp_path):
    for i in (2, 0, 1):
        write_jsonl(tmp_path / f"shard.{i:03d}.jsonl.gz", [f"doc {i}"], gzip.open)
    write_jsonl(tmp_path / "other.jsonl", ["not matched"])
    assert list(iter_documents(str(tmp_path / "shard.*.jsonl.gz"))) == ["doc 0", "doc 1", "doc 2"]
    assert [p.name for p in resolve_files(str(tmp_path / "**" / "*.jsonl*"))][0] == "other.jsonl"


def test_ptb_splits_one_document_per_sentence():
    train = list(iter_documents("ptb:train"))
    assert len(train) == 42068
    assert train[0].startswith("aer banknote berlitz") and not train[0].endswith(" ")
    assert train[1] == "pierre <unk> N years old will join the board as a nonexecutive director nov. N"
    assert next(iter(iter_documents("ptb"))) == train[0]
    assert sum(1 for _ in iter_documents("ptb:valid")) == 3370
    assert sum(1 for _ in iter_documents("ptb:test")) == 3761


def test_ptb_unknown_split_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown PTB split 'dev'.*\['train', 'valid', 'test'\]"):
        iter_documents("ptb:dev")


# ---- bad input ---------------------------------------------------------------------


def test_corrupt_xz_names_the_file(tmp_path):
    garbage = tmp_path / "garbage.jsonl.xz"
    garbage.write_bytes(b"this is not xz data at all" * 10)
    with pytest.raises(ValueError, match=r"garbage\.jsonl\.xz: corrupt"):
        list(iter_documents(str(garbage)))


def test_truncated_xz_and_gz_fail_clearly(tmp_path):
    docs = [f"document number {i} " * 20 for i in range(200)]
    for name, opener in (("t.jsonl.xz", lzma.open), ("t.jsonl.gz", gzip.open)):
        full = write_jsonl(tmp_path / ("full-" + name), docs, opener)
        cut = tmp_path / name
        cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')}: corrupt, truncated"):
            list(iter_documents(str(cut)))


@pytest.mark.parametrize(
    "content,match",
    [
        ('{"text": "ok"}\n{"title": "no text"}\n', r"bad\.jsonl:2: no 'text' field \(fields: \['title'\]\)"),
        ('{"text": "ok"}\n["a", "list"]\n', r"bad\.jsonl:2: expected a JSON object with a 'text' field, got a list"),
        ('{"text": "ok"}\n\n{"text": "unterminated\n', r"bad\.jsonl:3: malformed JSON"),
        ('{"text": 42}\n', r"bad\.jsonl:1: the 'text' field is a int, not a string"),
    ],
)
def test_bad_json_lines_name_file_and_line(tmp_path, content, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        list(iter_documents(str(path)))


def test_bad_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("fine\n".encode() + "caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt:2: not valid UTF-8"):
        list(iter_documents(str(path)))


@pytest.mark.parametrize(
    "name,content", [("empty.jsonl", ""), ("blank.txt", "\n \n\t\n"), ("e.jsonl", '{"text": ""}\n')]
)
def test_empty_corpus_is_an_error(tmp_path, name, content):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty corpus, no documents in .*" + name.replace(".", "[.]")):
        list(iter_documents(str(tmp_path / name)))


def test_paths_that_name_nothing_fail_at_the_call(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        iter_documents(str(tmp_path / "missing.jsonl"))
    with pytest.raises(FileNotFoundError, match="the glob matches no corpus file"):
        iter_documents(str(tmp_path / "*.jsonl"))
    (tmp_path / "notes.md").write_text("x", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"1 match\(es\), none a"):
        iter_documents(str(tmp_path / "*.md"))
    with pytest.raises(FileNotFoundError, match="a folder with no corpus files"):
        iter_documents(str(tmp_path))
    with pytest.raises(ValueError, match=r"notes\.md: unsupported file type"):
        iter_documents(str(tmp_path / "notes.md"))


def test_lone_surrogate_escape_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    # a paired escape is one emoji; a lone one passes json.loads but no tokenizer can encode it
    path.write_text('{"text": "ok \\ud83d\\ude00"}\n{"text": "bad \\ud83d emoji"}\n', encoding="utf-8")
    docs = iter_documents(str(path))
    assert next(docs) == "ok \U0001f600"
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: the 'text' field is not valid Unicode: a lone surrogate"):
        next(docs)


@pytest.mark.parametrize(
    "name,content", [("bom.txt", "first doc\n\nsecond\n"), ("bom.jsonl", '{"text": "first doc"}\n')]
)
def test_utf8_byte_order_mark_is_not_text(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + content.encode("utf-8"))
    assert next(iter_documents(str(path))) == "first doc"


def test_a_prepared_folder_is_refused_as_raw_text(tmp_path):
    (tmp_path / "manifest.json").write_text('{"format": "emaprobe-tokens"}\n', encoding="utf-8")
    (tmp_path / "notes.txt").write_text("text that would otherwise be read\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"is already a prepared corpus \(manifest\.json\), not raw text"):
        iter_documents(str(tmp_path))
