"""The interface every tokenizer shares, and the config file that lets any of them be restored.

A saved tokenizer is a folder holding ``emaprobe_tokenizer.json`` (its registry name,
``vocab_size``, ``eot_id`` and its own fields) beside the files it needs (GPT-2
ranks, a word list, or an HF ``tokenizer.json``). ``load_tokenizer(dir)`` reads the
name and hands the folder to that class's ``load``.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from emaprobe.utils import atomic_write_json, read_json

CONFIG_NAME = "emaprobe_tokenizer.json"


class Tokenizer(ABC):
    """Text to ids and back. Documents are separated in a token stream by ``eot_id``.

    ``encode`` never emits ``eot_id`` for text that happens to spell the end-of-text
    marker: only the data pipeline places it, between documents.
    """

    name: ClassVar[str]
    vocab_size: int
    eot_id: int

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    @abstractmethod
    def _save_files(self, directory: Path) -> dict[str, Any]:
        """Write the files the tokenizer needs into ``directory``; return extra config fields."""

    @classmethod
    @abstractmethod
    def load(cls, directory: Path, config: dict[str, Any]) -> Tokenizer:
        """Restore from a folder written by ``save``; ``config`` is its parsed config file."""

    @classmethod
    @abstractmethod
    def create(cls, **options: Any) -> Tokenizer:
        """Build from keyword options (what ``get_tokenizer(name, **options)`` calls)."""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """A hex digest that changes whenever the id mapping does (used for cache keys)."""

    def save(self, directory: str | os.PathLike) -> Path:
        """Write everything needed to restore this tokenizer with ``load_tokenizer(directory)``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        extra = self._save_files(directory)
        config = {"name": self.name, "vocab_size": self.vocab_size, "eot_id": self.eot_id, **extra}
        atomic_write_json(directory / CONFIG_NAME, config)
        return directory

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, eot_id={self.eot_id})"


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{Path(directory)}: no {CONFIG_NAME}; not a folder written by Tokenizer.save")
    config = read_json(path)
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"{path}: expected a JSON object with a 'name' field")
    return config
