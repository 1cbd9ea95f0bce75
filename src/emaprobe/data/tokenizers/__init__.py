"""Tokenizers behind one interface (``Tokenizer``) and a registry.

| name   | what | options of ``get_tokenizer`` |
|--------|------|------------------------------|
| `gpt2` | GPT-2 byte-level BPE through tiktoken, local ranks file, 50,257 ids | `ranks_path` |
| `word` | word-level, PTB's Mikolov setup, `<eos>` per line | `corpus` (default `ptb:train`), `max_vocab`, `min_freq` |
| `bpe`  | byte-level BPE trained with HF tokenizers | `corpus`, `vocab_size`, `min_frequency`, or `tokenizer_file` |

Every tokenizer has ``name``, ``vocab_size``, ``eot_id``, ``encode``, ``decode`` and
``save(dir)``; ``load_tokenizer(dir)`` restores any of them.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from emaprobe.data.tokenizers.base import CONFIG_NAME, Tokenizer, read_config
from emaprobe.data.tokenizers.bpe import BPETokenizer, train_bpe
from emaprobe.data.tokenizers.gpt2 import GPT2Tokenizer
from emaprobe.data.tokenizers.word import WordTokenizer

TOKENIZERS: dict[str, type[Tokenizer]] = {
    "bpe": BPETokenizer,
    "gpt2": GPT2Tokenizer,
    "word": WordTokenizer,
}


def _registered(name: str) -> type[Tokenizer]:
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; choose one of {sorted(TOKENIZERS)}")
    return TOKENIZERS[name]


def get_tokenizer(name: str, **options: Any) -> Tokenizer:
    """Build tokenizer ``name`` from keyword ``options`` (see the table in this module)."""
    cls = _registered(name)
    valid = [p for p in inspect.signature(cls.create).parameters if p != "cls"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"tokenizer {name!r} takes no option(s) {unknown}; valid options: {valid}")
    return cls.create(**options)


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Restore a tokenizer from a folder written by ``Tokenizer.save``."""
    directory = Path(directory)
    config = read_config(directory)
    tok = _registered(config["name"]).load(directory, config)
    for field in ("vocab_size", "eot_id"):
        if field in config and config[field] != getattr(tok, field):
            raise ValueError(
                f"{directory / CONFIG_NAME}: {field} is {config[field]} but the files give {getattr(tok, field)}"
            )
    return tok


def resolve_tokenizer(tokenizer: Tokenizer | str | os.PathLike, **options: Any) -> Tokenizer:
    """A ``Tokenizer`` as is, a folder written by ``save``, or a registry name built with ``options``."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    path = Path(tokenizer)
    if (path / CONFIG_NAME).is_file():
        return load_tokenizer(path)
    if str(tokenizer) not in TOKENIZERS and path.is_dir():
        raise FileNotFoundError(f"{path}: no {CONFIG_NAME}; not a saved tokenizer folder")
    return get_tokenizer(str(tokenizer), **options)


__all__ = [
    "TOKENIZERS",
    "BPETokenizer",
    "GPT2Tokenizer",
    "Tokenizer",
    "WordTokenizer",
    "get_tokenizer",
    "load_tokenizer",
    "resolve_tokenizer",
    "train_bpe",
]
