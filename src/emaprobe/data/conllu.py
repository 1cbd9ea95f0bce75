"""A strict, streaming CoNLL-U reader (Universal Dependencies v2 format).

Format (https://universaldependencies.org/format.html): a sentence is a block of
comment lines (``# key = value``) followed by token lines of 10 tab-separated
columns, ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC, and ends at a blank
line. ID is one of

* an integer ``3``: a syntactic word, numbered 1, 2, ... within the sentence;
* a range ``3-4``: a multiword token, the surface form of words 3 and 4 (English
  "don't" = "do" + "n't"), which carries no annotation besides FORM and MISC;
* a decimal ``3.1``: an empty node of the enhanced graph, sitting after word 3.

Dependencies (HEAD, DEPREL) hold between syntactic words, so a sentence's ``words``
are what role extraction reads; multiword tokens and empty nodes are kept beside them.

Strict means that any line the format does not allow raises ValueError naming the
file and the 1-based line number: a wrong column count, an ID that is not an
integer/range/decimal or is out of sequence, a HEAD that is not an integer within
the sentence, an empty DEPREL, a sentence without exactly one root, a head cycle, a
comment inside a token block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

SPLITS = ("train", "dev", "test")
COLUMNS = ("ID", "FORM", "LEMMA", "UPOS", "XPOS", "FEATS", "HEAD", "DEPREL", "DEPS", "MISC")
_INT = re.compile(r"[1-9][0-9]*\Z")
_RANGE = re.compile(r"([1-9][0-9]*)-([1-9][0-9]*)\Z")
_DECIMAL = re.compile(r"(0|[1-9][0-9]*)\.([1-9][0-9]*)\Z")
# ASCII only: str.isdigit() also takes "²" or "٣", which int() then refuses without a line number
_HEAD = re.compile(r"[0-9]+\Z")


@dataclass(frozen=True)
class Word:
    """A syntactic word (integer ID). head is 0 for the root."""

    id: int
    form: str
    lemma: str
    upos: str
    xpos: str
    feats: str
    head: int
    deprel: str
    deps: str
    misc: str

    @property
    def base_deprel(self) -> str:
        """The universal relation without its subtype: "acl:relcl" -> "acl"."""
        return self.deprel.split(":", 1)[0]


@dataclass(frozen=True)
class MultiwordToken:
    """A surface token spanning words first..last (ID "first-last")."""

    first: int
    last: int
    form: str
    misc: str


@dataclass(frozen=True)
class EmptyNode:
    """An empty node of the enhanced graph (ID "after.index"); it has no basic head."""

    after: int
    index: int
    form: str
    lemma: str
    upos: str
    deps: str


@dataclass(frozen=True)
class Sentence:
    """One CoNLL-U sentence. ``line`` is the 1-based line of its first line in ``path``."""

    words: tuple[Word, ...]
    multiword: tuple[MultiwordToken, ...]
    empty: tuple[EmptyNode, ...]
    comments: tuple[str, ...]
    path: str
    line: int

    @property
    def sent_id(self) -> str | None:
        return self._comment("sent_id")

    @property
    def text(self) -> str | None:
        return self._comment("text")

    def _comment(self, key: str) -> str | None:
        for c in self.comments:
            k, sep, v = c.lstrip("#").partition("=")
            if sep and k.strip() == key:
                return v.strip()
        return None

    def children(self) -> dict[int, list[Word]]:
        """Word id -> its dependents (0 -> the root)."""
        kids: dict[int, list[Word]] = {}
        for w in self.words:
            kids.setdefault(w.head, []).append(w)
        return kids


class _Block:
    """The lines of one sentence as they are read, checked line by line."""

    def __init__(self, path: str, line: int) -> None:
        self.path, self.line = path, line
        self.words: list[Word] = []
        self.multiword: list[MultiwordToken] = []
        self.empty: list[EmptyNode] = []
        self.comments: list[str] = []
        self.head_lines: list[int] = []  # line of each word, for errors found at the end
        self.mwt_end = 0

    def error(self, lineno: int, msg: str) -> ValueError:
        return ValueError(f"{self.path}:{lineno}: {msg}")

    def add(self, lineno: int, line: str) -> None:
        cols = line.split("\t")
        if len(cols) != 10:
            raise self.error(lineno, f"expected 10 tab-separated columns, found {len(cols)}")
        for name, value in zip(COLUMNS, cols):
            if value == "":
                raise self.error(lineno, f"column {name} is empty (write '_' for no value)")
        id_, form, lemma, upos, xpos, feats, head, deprel, deps, misc = cols
        n = len(self.words)
        if m := _RANGE.match(id_):
            first, last = int(m.group(1)), int(m.group(2))
            if first != n + 1 or last <= first:
                raise self.error(
                    lineno, f"multiword token ID {id_!r} must start at word {n + 1} and span two or more words"
                )
            if first <= self.mwt_end:  # "1-2", word 1, "2-3": word 2 would belong to two tokens
                raise self.error(
                    lineno, f"multiword token ID {id_!r} overlaps the previous one, which ends at word {self.mwt_end}"
                )
            if head != "_" or deprel != "_":
                raise self.error(lineno, f"multiword token {id_!r} must have '_' for HEAD and DEPREL")
            self.multiword.append(MultiwordToken(first, last, form, misc))
            self.mwt_end = last
        elif m := _DECIMAL.match(id_):
            after, index = int(m.group(1)), int(m.group(2))
            expected = (self.empty[-1].index + 1) if self.empty and self.empty[-1].after == after else 1
            if after != n or index != expected:
                raise self.error(lineno, f"empty node ID {id_!r} out of sequence; expected {n}.{expected}")
            if head != "_" or deprel != "_":
                raise self.error(lineno, f"empty node {id_!r} must have '_' for HEAD and DEPREL")
            self.empty.append(EmptyNode(after, index, form, lemma, upos, deps))
        elif _INT.match(id_):
            if int(id_) != n + 1:
                raise self.error(lineno, f"word ID {id_} out of sequence; expected {n + 1}")
            if not _HEAD.match(head):
                raise self.error(lineno, f"HEAD {head!r} of word {id_} is not a non-negative integer")
            if int(head) == int(id_):
                raise self.error(lineno, f"word {id_} is its own head")
            if deprel == "_":
                raise self.error(lineno, f"word {id_} has no DEPREL")
            self.words.append(Word(int(id_), form, lemma, upos, xpos, feats, int(head), deprel, deps, misc))
            self.head_lines.append(lineno)
        else:
            raise self.error(lineno, f"ID {id_!r} is not an integer, a range (3-4) or a decimal (3.1)")

    def finish(self, end_line: int) -> Sentence:
        if not self.words:
            what = "comments but no words" if self.comments and not (self.multiword or self.empty) else "no words"
            raise self.error(self.line, f"sentence has {what}")
        n = len(self.words)
        if self.mwt_end > n:
            raise self.error(end_line, f"multiword token reaches word {self.mwt_end}, but the sentence has {n} words")
        roots = [w for w in self.words if w.head == 0]
        for w, lineno in zip(self.words, self.head_lines):
            if w.head > n:
                raise self.error(lineno, f"HEAD {w.head} of word {w.id} is past the last word ({n})")
        if len(roots) != 1:
            where = self.head_lines[roots[1].id - 1] if len(roots) > 1 else self.line
            raise self.error(where, f"sentence must have exactly one root (HEAD 0), found {len(roots)}")
        heads = {w.id: w.head for w in self.words}
        for w, lineno in zip(self.words, self.head_lines):
            seen, node = set(), w.id
            while node != 0:
                if node in seen:
                    raise self.error(lineno, f"word {w.id}'s chain of heads loops and never reaches the root")
                seen.add(node)
                node = heads[node]
        return Sentence(
            tuple(self.words), tuple(self.multiword), tuple(self.empty), tuple(self.comments), self.path, self.line
        )


def read_conllu(path: str | Path) -> Iterator[Sentence]:
    """Stream the sentences of a CoNLL-U file; raises ValueError naming the file and line."""
    path = Path(path)
    block: _Block | None = None
    lineno = 0
    with open(path, "rb") as f:  # bytes, decoded line by line, so a bad byte is named by its line
        for lineno, raw_bytes in enumerate(f, start=1):
            try:
                raw = raw_bytes.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text ({e.reason})") from None
            line = raw.rstrip("\r\n")
            if not line.strip():
                if line:
                    raise ValueError(f"{path}:{lineno}: a blank line must be empty (found only whitespace)")
                if block is not None:
                    yield block.finish(lineno)
                    block = None
                continue
            if block is None:
                block = _Block(str(path), lineno)
            if line.startswith("#"):
                if block.words or block.multiword or block.empty:
                    raise ValueError(f"{path}:{lineno}: comment line inside a sentence's token lines")
                block.comments.append(line)
            else:
                block.add(lineno, line)
    if block is not None:  # the format asks for a final blank line; a missing one loses nothing
        yield block.finish(lineno)


def find_treebank_files(folder: str | Path) -> dict[str, Path]:
    """The ``*-ud-{train,dev,test}.conllu`` files of a UD treebank folder, by split.

    A treebank may lack a split (many have test only); it may not have two files for one.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder (expected a UD treebank folder with *-ud-train.conllu etc.)")
    found: dict[str, Path] = {}
    for split in SPLITS:
        matches = sorted(folder.glob(f"*-ud-{split}.conllu"))
        if len(matches) > 1:
            raise ValueError(f"{folder}: several {split} files: {[m.name for m in matches]}")
        if matches:
            found[split] = matches[0]
    if not found:
        raise FileNotFoundError(f"{folder} holds no *-ud-{{train,dev,test}}.conllu file")
    return found
