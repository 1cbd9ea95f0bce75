"""Property tests: the CoNLL-U and corpus readers meet any input with a named error, never a traceback.

The rule for every reader: it returns what the file holds, or raises ValueError or
FileNotFoundError with a message naming the file. Valid CoNLL-U sentences built at
random must read back exactly; random lines, random bytes and cut-short .gz/.xz
files must fail that way.
"""

from __future__ import annotations

import gzip
import json
import lzma
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from emaprobe.data import iter_documents  # noqa: E402
from emaprobe.data.conllu import read_conllu  # noqa: E402

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
FORM = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), blacklist_characters="\t#"),
               min_size=1, max_size=6)
DEPRELS = st.sampled_from(["nsubj", "obj", "iobj", "obl", "det", "amod", "nsubj:pass", "obl:agent", "punct"])


def _named(err: Exception, path: Path) -> None:
    assert isinstance(err, (ValueError, FileNotFoundError)), f"{type(err).__name__}: {err}"
    assert str(path) in str(err), f"the error does not name the file: {err}"


@st.composite
def sentences(draw):
    """A valid CoNLL-U sentence: words 1..n, one root, heads forming a tree."""
    n = draw(st.integers(1, 8))
    root = draw(st.integers(1, n))
    heads = {}
    attached = [root]
    for i in [i for i in draw(st.permutations(range(1, n + 1))) if i != root]:
        heads[i] = draw(st.sampled_from(attached))
        attached.append(i)
    heads[root] = 0
    words = draw(st.lists(FORM, min_size=n, max_size=n))
    rels = draw(st.lists(DEPRELS, min_size=n, max_size=n))
    lines = [f"{i}\t{words[i - 1]}\t_\tNOUN\t_\t_\t{heads[i]}\t{'root' if heads[i] == 0 else rels[i - 1]}\t_\t_"
             for i in range(1, n + 1)]
    comments = ["# sent_id = s"] if draw(st.booleans()) else []
    return comments + lines, words, heads


@SETTINGS
@given(sents=st.lists(sentences(), min_size=1, max_size=4))
def test_valid_conllu_reads_back(sents, tmp_path):
    path = tmp_path / "ok.conllu"
    path.write_text("".join("\n".join(lines) + "\n\n" for lines, _, _ in sents), encoding="utf-8")
    got = list(read_conllu(path))
    assert len(got) == len(sents)
    for sent, (_, words, heads) in zip(got, sents):
        assert [w.form for w in sent.words] == words
        assert [w.head for w in sent.words] == [heads[i] for i in range(1, len(words) + 1)]


# text a UTF-8 file can hold: lone surrogates (category Cs) have no encoding, so no file has them
UTF8 = st.characters(blacklist_categories=("Cs",))
LINE = st.one_of(
    st.text(UTF8, max_size=60),
    st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r"), max_size=5),
             min_size=1, max_size=12)
    .map("\t".join),
    st.sampled_from(["", " ", "# c", "1-2\tab\t_\t_\t_\t_\t_\t_\t_\t_", "1.1\tx\t_\t_\t_\t_\t_\t_\t_\t_",
                     "2\tx\t_\tX\t_\t_\t9\tdep\t_\t_", "1\tx\t_\tX\t_\t_\t1\tdep\t_\t_",
                     "1\tx\t_\tX\t_\t_\t0\troot\t_\t_"]),
)


@SETTINGS
@given(lines=st.lists(LINE, min_size=1, max_size=10), base=st.lists(sentences(), max_size=1))
def test_random_conllu_lines_read_or_fail_with_a_named_error(lines, base, tmp_path):
    path = tmp_path / "any.conllu"
    head = "\n".join(base[0][0]) + "\n" if base else ""
    path.write_text(head + "\n".join(lines) + "\n", encoding="utf-8")
    try:
        for sent in read_conllu(path):
            assert sent.words, "a sentence without words was returned"
    except Exception as err:  # noqa: BLE001 - the property is about the kind of error
        _named(err, path)


@SETTINGS
@given(data=st.binary(max_size=300))
def test_random_bytes_conllu_read_or_fail_with_a_named_error(data, tmp_path):
    path = tmp_path / "bytes.conllu"
    path.write_bytes(data)
    try:
        list(read_conllu(path))
    except Exception as err:  # noqa: BLE001
        _named(err, path)


@SETTINGS
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".txt", ".jsonl.gz", ".txt.xz", ".json.xz"]))
def test_random_bytes_in_any_corpus_format_read_or_fail_with_a_named_error(data, suffix, tmp_path):
    path = tmp_path / f"corpus{suffix}"
    path.write_bytes(data)
    try:
        docs = list(iter_documents(str(path)))
        assert docs and all(isinstance(d, str) for d in docs)
    except Exception as err:  # noqa: BLE001
        _named(err, path)


DOCS = st.lists(st.text(UTF8, min_size=1, max_size=40).filter(lambda t: t.strip()), min_size=1, max_size=8)


@SETTINGS
@given(docs=DOCS, kind=st.sampled_from(["jsonl", "txt"]), comp=st.sampled_from(["gz", "xz"]),
       cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_compressed_files_fail_with_a_named_error(docs, kind, comp, cut, tmp_path):
    if kind == "jsonl":
        raw = "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()
    else:
        raw = "\n\n".join(d.replace("\n", " ") for d in docs).encode()
    packed = gzip.compress(raw) if comp == "gz" else lzma.compress(raw)
    path = tmp_path / f"corpus.{kind}.{comp}"
    path.write_bytes(packed[: int(len(packed) * cut)])
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        list(iter_documents(str(path)))
    _named(info.value, path)


@SETTINGS
@given(docs=DOCS, comp=st.sampled_from(["gz", "xz"]))
def test_whole_compressed_jsonl_reads_back(docs, comp, tmp_path):
    raw = "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()
    path = tmp_path / f"corpus.jsonl.{comp}"
    path.write_bytes(gzip.compress(raw) if comp == "gz" else lzma.compress(raw))
    assert list(iter_documents(str(path))) == docs
