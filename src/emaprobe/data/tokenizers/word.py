"""Word-level tokenizer, the Penn Treebank language-modelling setup (Mikolov et al., 2010).

Words are whitespace-separated; every line ends with ``<eos>``, which is also the
end-of-text id that separates documents. A newline inside a text encodes to
``<eos>`` and decodes back, so a file in PTB layout (one sentence a line) gives the
same stream whether it is read as one document or as one document a line. Words
outside the vocabulary become ``<unk>`` (PTB already spells rare words that way), and so
does a literal ``<eos>`` in the text: only a newline or the pipeline places that id.
The vocabulary is built from a training corpus and saved as a JSON word list.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from emaprobe.data.tokenizers.base import Tokenizer, sha256_hex
from emaprobe.utils import atomic_write_text, read_json

VOCAB_FILE = "vocab.json"
UNK = "<unk>"
EOS = "<eos>"


class WordTokenizer(Tokenizer):
    """Whitespace words with a fixed vocabulary; ``<eos>`` ends every line and document."""

    name = "word"

    def __init__(self, words: list[str], unk: str = UNK, eos: str = EOS) -> None:
        if len(set(words)) != len(words):
            dup = next(w for w, c in Counter(words).items() if c > 1)
            raise ValueError(f"word vocabulary repeats {dup!r}")
        for special in (unk, eos):
            if special not in words:
                raise ValueError(f"word vocabulary lacks the special token {special!r}")
        self.words = list(words)
        self.unk, self.eos = unk, eos
        self.ids = {w: i for i, w in enumerate(self.words)}
        self.unk_id = self.ids[unk]
        self.eot_id = self.ids[eos]
        self.vocab_size = len(self.words)

    @classmethod
    def build(
        cls,
        documents: Iterable[str],
        max_vocab: int | None = None,
        min_freq: int = 1,
        unk: str = UNK,
        eos: str = EOS,
    ) -> WordTokenizer:
        """Count words (and one ``<eos>`` per line) over ``documents``; most frequent first.

        Ties keep first-seen order, so the same corpus always gives the same ids.
        ``max_vocab`` counts ``<unk>`` and ``<eos>``.
        """
        counts: Counter[str] = Counter()
        for doc in documents:
            words = doc.split()
            counts.update(words)
            # eos counts newlines and ends only: the eos word spelled in the text encodes to unk
            counts[eos] += doc.count("\n") + 1 - words.count(eos)
        counts.setdefault(unk, 0)
        if max_vocab is not None and max_vocab < 2:
            raise ValueError(f"max_vocab must be >= 2 (room for {unk!r} and {eos!r}), got {max_vocab}")
        specials = {unk, eos}
        kept = [w for w, c in counts.most_common() if c >= min_freq or w in specials]
        if max_vocab is not None and len(kept) > max_vocab:
            head = [w for w in kept if w not in specials][: max_vocab - 2]
            keep = set(head) | specials
            kept = [w for w in kept if w in keep]
        return cls(kept, unk=unk, eos=eos)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        lines = text.split("\n")
        for i, line in enumerate(lines):
            # the eos word spelled in the text is text, not a document end (the base-class contract)
            ids.extend(self.unk_id if w == self.eos else self.ids.get(w, self.unk_id) for w in line.split())
            if i < len(lines) - 1:
                ids.append(self.eot_id)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        lines: list[str] = []
        current: list[str] = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} outside the word vocabulary of {self.vocab_size}")
            if i == self.eot_id:
                lines.append(" ".join(current))
                current = []
            else:
                current.append(self.words[i])
        lines.append(" ".join(current))
        return "\n".join(lines)

    @property
    def fingerprint(self) -> str:
        return sha256_hex(json.dumps([self.words, self.unk, self.eos]))

    def _save_files(self, directory: Path) -> dict[str, Any]:
        atomic_write_text(directory / VOCAB_FILE, json.dumps(self.words, ensure_ascii=False) + "\n")
        return {"vocab_file": VOCAB_FILE, "unk": self.unk, "eos": self.eos}

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any]) -> WordTokenizer:
        path = directory / config.get("vocab_file", VOCAB_FILE)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the word list of this saved tokenizer is missing")
        words = read_json(path)
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ValueError(f"{path}: expected a JSON list of words")
        return cls(words, unk=config.get("unk", UNK), eos=config.get("eos", EOS))

    @classmethod
    def create(cls, corpus: str = "ptb:train", max_vocab: int | None = None, min_freq: int = 1) -> WordTokenizer:
        """Build the vocabulary from the documents of data spec ``corpus`` (PTB's train split by default)."""
        from emaprobe.data.readers import iter_documents

        return cls.build(iter_documents(corpus), max_vocab=max_vocab, min_freq=min_freq)
