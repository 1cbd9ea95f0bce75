"""GPT-2's byte-level BPE through ``tiktoken``, built from a local ranks file.

The ranks file (``gpt2.tiktoken``: one ``base64(token) rank`` a line, tiktoken's
``r50k_base``) is found from, in order, the ``ranks_path`` argument, the
``EMAPROBE_GPT2_RANKS`` environment variable, and ``$EMAPROBE_DATA/gpt2/gpt2.tiktoken``.
Nothing is downloaded. The split pattern is the one in openai/gpt-2's
``src/encoder.py``; ``<|endoftext|>`` is id 50256, so the vocabulary has 50,257 ids.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from emaprobe.data.tokenizers.base import Tokenizer, sha256_hex
from emaprobe.utils.paths import ENV_DATA, find_data

ENV_RANKS = "EMAPROBE_GPT2_RANKS"
RANKS_FILE = "gpt2.tiktoken"
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT_TEXT = "<|endoftext|>"
GPT2_EOT_ID = 50256


class RanksNotFound(FileNotFoundError):
    """No ranks file was given and none is where one is looked for.

    ``give`` is the way to pass the file explicitly in the caller's words: ``ranks_path``
    from Python; a command line raises it again naming its own flag.
    """

    def __init__(self, give: str = "pass ranks_path") -> None:
        root = os.environ.get(ENV_DATA)
        if root:
            looked = f"{Path(root).expanduser() / 'gpt2' / RANKS_FILE} does not exist"
        else:
            looked = f"neither {ENV_RANKS} nor {ENV_DATA} is set"
        super().__init__(
            f"GPT-2 ranks file not found: {give}, set {ENV_RANKS} to the file, "
            f"or set {ENV_DATA} to a folder holding gpt2/{RANKS_FILE} ({looked})"
        )


def resolve_ranks_path(ranks_path: str | os.PathLike | None = None) -> Path:
    if ranks_path is None:
        ranks_path = os.environ.get(ENV_RANKS) or None
    if ranks_path is not None:
        return find_data("gpt2/gpt2.tiktoken", ranks_path)
    try:
        return find_data("gpt2/gpt2.tiktoken")
    except FileNotFoundError:
        raise RanksNotFound() from None


def read_ranks(path: Path) -> dict[bytes, int]:
    """Parse a ``.tiktoken`` ranks file without tiktoken's loader, which caches files in /tmp."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                if len(parts) != 2:
                    raise ValueError("expected 'base64token rank'")
                ranks[base64.b64decode(parts[0], validate=True)] = int(parts[1])
            except (ValueError, binascii.Error) as err:
                raise ValueError(f"{path}:{lineno}: not a tiktoken ranks line ({err})") from None
    return ranks


class GPT2Tokenizer(Tokenizer):
    """GPT-2 BPE (50,257 ids, ``<|endoftext|>`` = 50256) from a local ``gpt2.tiktoken``."""

    name = "gpt2"

    def __init__(self, ranks_path: str | os.PathLike | None = None) -> None:
        import tiktoken

        self.ranks_path = resolve_ranks_path(ranks_path)
        raw = self.ranks_path.read_bytes()
        self._sha256 = sha256_hex(raw)
        ranks = read_ranks(self.ranks_path)
        if len(ranks) != GPT2_EOT_ID or max(ranks.values()) != GPT2_EOT_ID - 1:
            raise ValueError(
                f"{self.ranks_path}: {len(ranks)} ranks; GPT-2's file has {GPT2_EOT_ID} (ids 0..{GPT2_EOT_ID - 1})"
            )
        self._enc = tiktoken.Encoding(
            "gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT_TEXT: GPT2_EOT_ID}
        )
        self.vocab_size = self._enc.n_vocab
        self.eot_id = GPT2_EOT_ID

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self._enc.decode(list(ids))

    @property
    def fingerprint(self) -> str:
        return self._sha256

    def _save_files(self, directory: Path) -> dict[str, Any]:
        target = directory / RANKS_FILE
        if target.resolve() != self.ranks_path.resolve():
            shutil.copyfile(self.ranks_path, target)
        return {"ranks_file": RANKS_FILE, "ranks_sha256": self._sha256}

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any]) -> GPT2Tokenizer:
        tok = cls(directory / config.get("ranks_file", RANKS_FILE))
        want = config.get("ranks_sha256")
        if want and want != tok.fingerprint:
            raise ValueError(f"{directory / RANKS_FILE}: sha256 {tok.fingerprint} differs from the saved {want}")
        return tok

    @classmethod
    def create(cls, ranks_path: str | os.PathLike | None = None) -> GPT2Tokenizer:
        return cls(ranks_path)
