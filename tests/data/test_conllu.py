"""The strict CoNLL-U reader: multiword tokens, empty nodes, and errors that name file and line."""

from __future__ import annotations

import pytest

from emaprobe.data.conllu import find_treebank_files, read_conllu


def _conllu(rows: list[str]) -> str:
    """Rows written with single spaces between columns, turned into tabs."""
    return "\n".join(r if r.startswith("#") or not r else "\t".join(r.split(" ")) for r in rows) + "\n"


GOOD = [
    "# sent_id = s1",
    "# text = I can't go.",
    "1 I I PRON PRP _ 4 nsubj _ _",
    "2-3 can't _ _ _ _ _ _ _ _",
    "2 ca can AUX MD _ 4 aux _ _",
    "3 n't not PART RB _ 4 advmod _ _",
    "4 go go VERB VB _ 0 root _ SpaceAfter=No",
    "5 . . PUNCT . _ 4 punct _ _",
    "",
]


def test_reads_the_handwritten_treebank(handwritten_conllu):
    sents = list(read_conllu(handwritten_conllu))
    assert [s.sent_id for s in sents] == ["h-1", "h-2", "h-3", "h-4"]
    assert [s.line for s in sents] == [1, 17, 31, 44]  # each sentence's first line, comments included
    assert sents[0].text == "The dog that the cat chased gave the boy a bone."
    assert [len(s.words) for s in sents] == [12, 10, 9, 9]


def test_multiword_tokens_keep_words_and_surface_form(tmp_path):
    path = tmp_path / "x.conllu"
    path.write_text(_conllu(GOOD))
    (s,) = read_conllu(path)
    assert [w.form for w in s.words] == ["I", "ca", "n't", "go", "."]
    assert [(m.first, m.last, m.form) for m in s.multiword] == [(2, 3, "can't")]
    assert [w.head for w in s.words] == [4, 4, 4, 0, 4]
    assert s.words[3].deprel == "root" and s.words[1].base_deprel == "aux"


def test_empty_nodes_are_kept_apart_from_words(handwritten_conllu):
    s = list(read_conllu(handwritten_conllu))[2]
    assert [(e.after, e.index, e.form) for e in s.empty] == [(6, 1, "saw")]
    assert [w.id for w in s.words] == list(range(1, 10))  # numbering of words is untouched


def test_last_sentence_without_final_blank_line_and_crlf(tmp_path):
    path = tmp_path / "x.conllu"
    path.write_bytes(_conllu(GOOD[:-1]).rstrip("\n").replace("\n", "\r\n").encode())
    (s,) = read_conllu(path)
    assert len(s.words) == 5 and s.words[-1].misc == "_"


def test_reader_streams(tmp_path):
    """A sentence comes out before a later broken line is read."""
    path = tmp_path / "x.conllu"
    path.write_text(_conllu(GOOD + ["1 broken"]))
    it = read_conllu(path)
    assert len(next(it).words) == 5
    with pytest.raises(ValueError, match=r"x\.conllu:10: expected 10"):
        next(it)


# GOOD[i] sits on line i + 4 of the file: a one-word sentence and a blank line come first
@pytest.mark.parametrize(
    "edits, message, line",
    [
        ({2: "1 I I PRON PRP _ 4 nsubj _"}, "expected 10 tab-separated columns, found 9", 6),
        ({2: "x I I PRON PRP _ 4 nsubj _ _"}, "ID 'x' is not an integer", 6),
        ({2: "2 I I PRON PRP _ 4 nsubj _ _"}, "word ID 2 out of sequence; expected 1", 6),
        ({2: "1 I I PRON PRP _ four nsubj _ _"}, "HEAD 'four' of word 1", 6),
        ({2: "1 I I PRON PRP _ 9 nsubj _ _"}, "HEAD 9 of word 1 is past the last word", 6),
        ({2: "1 I I PRON PRP _ 1 nsubj _ _"}, "word 1 is its own head", 6),
        ({2: "1 I I PRON PRP _ 4 _ _ _"}, "word 1 has no DEPREL", 6),
        ({2: "1 I I PRON PRP  4 nsubj _ _"}, "column FEATS is empty", 6),
        ({2: "1 I I PRON PRP _ 0 nsubj _ _"}, "exactly one root (HEAD 0), found 2", 10),
        ({3: "3-3 can't _ _ _ _ _ _ _ _"}, "multiword token ID '3-3'", 7),
        ({3: "2-3 can't _ _ _ _ 4 aux _ _"}, "must have '_' for HEAD and DEPREL", 7),
        ({3: "1.2 x x X _ _ _ _ _ _"}, "empty node ID '1.2' out of sequence; expected 1.1", 7),
        ({4: ["2 ca can AUX MD _ 4 aux _ _", "# oops"]}, "comment line inside", 9),
        ({4: "2 ca can AUX MD _ 3 aux _ _", 5: "3 n't not PART RB _ 2 advmod _ _"}, "never reaches the root", 8),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, edits, message, line):
    rows = []
    for i, row in enumerate(GOOD):
        edit = edits.get(i, row)
        rows.extend(edit if isinstance(edit, list) else [edit])
    path = tmp_path / "broken-ud-dev.conllu"
    path.write_text(_conllu(["# sent_id = s0", "1 Hi hi INTJ UH _ 0 root _ _", ""] + rows))
    with pytest.raises(ValueError) as info:
        list(read_conllu(path))
    assert str(info.value).startswith(f"{path}:{line}: "), str(info.value)
    assert message in str(info.value)


def test_error_line_numbers_are_exact(tmp_path):
    rows = list(GOOD)
    rows[5] = "3 n't not PART RB _ 4 advmod _"  # line 6 of the file
    path = tmp_path / "x.conllu"
    path.write_text(_conllu(rows))
    with pytest.raises(ValueError, match=rf"^{path}:6: expected 10"):
        list(read_conllu(path))
    path.write_text(_conllu(GOOD).replace("\n\n", "\n  \n") + _conllu(GOOD))
    with pytest.raises(ValueError, match=rf"^{path}:9: a blank line must be empty"):
        list(read_conllu(path))


def test_bytes_that_are_not_utf8_name_the_line(tmp_path):
    path = tmp_path / "x.conllu"
    path.write_bytes(_conllu(GOOD).encode() + b"# caf\xe9\n")
    with pytest.raises(ValueError, match=rf"^{path}:10: not UTF-8"):
        list(read_conllu(path))


def test_find_treebank_files(tmp_path, handwritten_treebank, handwritten_conllu):
    assert find_treebank_files(handwritten_treebank) == {"test": handwritten_conllu}
    for split in ("train", "dev", "test"):
        (tmp_path / f"xx_yy-ud-{split}.conllu").write_text(_conllu(GOOD))
    assert sorted(find_treebank_files(tmp_path)) == ["dev", "test", "train"]
    (tmp_path / "zz-ud-dev.conllu").write_text("")
    with pytest.raises(ValueError, match="several dev files"):
        find_treebank_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="no \\*-ud-"):
        find_treebank_files(tmp_path / "..")  # a folder without treebank files
    with pytest.raises(FileNotFoundError, match="not a folder"):
        find_treebank_files(tmp_path / "missing")


def _read(tmp_path, rows: list[str]):
    path = tmp_path / "x.conllu"
    path.write_text(_conllu(rows))
    return path, lambda: list(read_conllu(path))


def test_overlapping_multiword_tokens_are_refused(tmp_path):
    path, read = _read(tmp_path, [
        "1-2 ab _ _ _ _ _ _ _ _",
        "1 a a X _ _ 0 root _ _",
        "2-3 bc _ _ _ _ _ _ _ _",  # word 2 is already inside 1-2
        "2 b b X _ _ 1 dep _ _",
        "3 c c X _ _ 1 dep _ _",
        "",
    ])
    with pytest.raises(ValueError, match=rf"^{path}:3: multiword token ID '2-3' overlaps the previous one"):
        read()


def test_a_sentence_of_only_a_multiword_token_says_no_words(tmp_path):
    path, read = _read(tmp_path, ["1-2 ab _ _ _ _ _ _ _ _", ""])
    with pytest.raises(ValueError) as info:
        read()
    assert str(info.value) == f"{path}:1: sentence has no words"


@pytest.mark.parametrize("head", ["\u00b2", "\u0663"])  # superscript two, Arabic-Indic three: isdigit() says yes
def test_unicode_digit_head_names_file_and_line(tmp_path, head):
    path, read = _read(tmp_path, ["1 a a X _ _ 0 root _ _", f"2 b b X _ _ {head} dep _ _", ""])
    with pytest.raises(ValueError, match=rf"^{path}:2: HEAD '{head}' of word 2 is not a non-negative integer"):
        read()
