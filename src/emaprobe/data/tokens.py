"""A tokenized split as one memmap-backed stream, with random and sequential batches.

A prepared folder (see ``emaprobe.data.prepare``) holds ``manifest.json``, a saved
tokenizer in ``tokenizer/`` and one or more flat ``.bin`` shards of uint16 or uint32
token ids. ``TokenData`` opens the shards as one stream of N tokens without reading
them into memory; ``data[i:j]`` returns a numpy array even across shard boundaries.

Symbols: B batch size, T sequence length, N tokens in the stream.

Bits per byte: a model's mean loss per token L (nats) gives
``L / ln 2 / bytes_per_token`` bits per byte, where ``bytes_per_token = n_bytes /
n_tokens`` counts the UTF-8 bytes of every document plus one byte for the separator
that its end-of-text token stands for. It is the unit that survives a change of
tokenizer (shared/PAPER.md, reference points).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from emaprobe.data.tokenizers import Tokenizer, load_tokenizer
from emaprobe.utils import read_json

MANIFEST = "manifest.json"
FORMAT = "emaprobe-tokens"
FORMAT_VERSION = 1
DTYPES = ("uint16", "uint32")


class TokenData:
    """One split of token ids: ``len``, slicing, ``tokenizer`` and ``bytes_per_token``.

    ``TokenData(dir)`` opens a prepared folder read-only; ``TokenData.from_array``
    wraps ids already in memory (what ``load_split`` builds for small corpora).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        root = Path(path)
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            hint = " (an interrupted prepare leaves no manifest)" if root.is_dir() else ""
            raise FileNotFoundError(f"{root}: no {MANIFEST}; not a folder written by 'emaprobe data prepare'{hint}")
        manifest = read_json(manifest_path)
        _check_manifest(manifest, manifest_path)
        dtype = np.dtype(manifest["dtype"])
        shards = []
        for entry in manifest["shards"]:
            file = root / entry["file"]
            n = int(entry["n_tokens"])
            if not file.is_file():
                raise FileNotFoundError(f"{manifest_path}: shard {entry['file']!r} is missing")
            size = file.stat().st_size
            if size != n * dtype.itemsize:
                raise ValueError(
                    f"{file}: {size} bytes, but the manifest says {n} {dtype.name} tokens "
                    f"({n * dtype.itemsize} bytes); the folder is damaged, prepare it again"
                )
            shards.append(np.memmap(file, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype))
        self._init(shards, load_tokenizer(root / manifest["tokenizer"]["dir"]), manifest, root)

    @classmethod
    def from_array(
        cls,
        tokens: np.ndarray,
        tokenizer: Tokenizer,
        n_bytes: int,
        n_documents: int,
        spec: str = "",
    ) -> TokenData:
        """Wrap 1-D ids already in memory; ``n_bytes`` as described in the module docstring."""
        arr = np.ascontiguousarray(tokens)
        if arr.ndim != 1:
            raise ValueError(f"tokens must be 1-D, got shape {arr.shape}")
        manifest = {
            "spec": spec,
            "dtype": arr.dtype.name,
            "n_tokens": int(arr.size),
            "n_documents": int(n_documents),
            "n_bytes": int(n_bytes),
            "tokenizer": {"name": tokenizer.name, "vocab_size": tokenizer.vocab_size, "eot_id": tokenizer.eot_id},
        }
        self = cls.__new__(cls)
        self._init([arr], tokenizer, manifest, None)
        return self

    def _init(
        self, shards: list[np.ndarray], tokenizer: Tokenizer, manifest: dict[str, Any], root: Path | None
    ) -> None:
        self.shards = shards
        self.tokenizer = tokenizer
        self.manifest = manifest
        self.path = root
        self.dtype = shards[0].dtype if shards else np.dtype(manifest["dtype"])
        # offsets[i] is the stream position of shard i's first token
        self._offsets = [0]
        for s in shards:
            self._offsets.append(self._offsets[-1] + len(s))

    def __len__(self) -> int:
        return self._offsets[-1]

    @property
    def n_tokens(self) -> int:
        return len(self)

    @property
    def n_documents(self) -> int:
        return int(self.manifest["n_documents"])

    @property
    def n_bytes(self) -> int:
        return int(self.manifest["n_bytes"])

    @property
    def bytes_per_token(self) -> float:
        """UTF-8 bytes of text per token: divide loss in bits per token by it for bits per byte."""
        return self.n_bytes / max(len(self), 1)

    def __getitem__(self, key: int | slice) -> Any:
        n = len(self)
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                raise ValueError("TokenData slices take step 1 only")
            return self.read(start, max(stop - start, 0))
        if not isinstance(key, (int, np.integer)):
            raise TypeError(f"TokenData indices are ints or slices, not {type(key).__name__}")
        i = int(key) + n if key < 0 else int(key)
        if not 0 <= i < n:
            raise IndexError(f"token index {key} out of range for {n} tokens")
        return self.read(i, 1)[0]

    def read(self, start: int, length: int) -> np.ndarray:
        """``length`` ids from stream position ``start``, as a fresh numpy array."""
        if start < 0 or length < 0 or start + length > len(self):
            raise IndexError(f"read({start}, {length}) outside a stream of {len(self)} tokens")
        out = np.empty(length, dtype=self.dtype)
        pos, filled = start, 0
        i = bisect.bisect_right(self._offsets, start) - 1
        while filled < length:
            shard_start = pos - self._offsets[i]
            take = min(length - filled, len(self.shards[i]) - shard_start)
            out[filled : filled + take] = self.shards[i][shard_start : shard_start + take]
            filled += take
            pos += take
            i += 1
        return out

    def decode(self, start: int = 0, length: int | None = None) -> str:
        """The text of ``length`` tokens from ``start`` (everything by default)."""
        length = len(self) - start if length is None else length
        return self.tokenizer.decode(self.read(start, length).tolist())

    def __repr__(self) -> str:
        where = f" from {self.path}" if self.path else ""
        return (
            f"TokenData({len(self):,} tokens, {self.n_documents:,} documents, {self.dtype.name}, "
            f"tokenizer={self.tokenizer.name!r}, {self.bytes_per_token:.3f} bytes/token{where})"
        )


def load_tokens(path: str | os.PathLike) -> TokenData:
    """Open a folder written by ``prepare`` (same as ``TokenData(path)``)."""
    return TokenData(path)


def _check_manifest(manifest: Any, where: Path) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{where}: not an emaprobe token manifest (no \"format\": \"{FORMAT}\")")
    if manifest.get("version") != FORMAT_VERSION:
        raise ValueError(f"{where}: manifest version {manifest.get('version')!r}; this emaprobe reads {FORMAT_VERSION}")
    for field in ("spec", "dtype", "n_tokens", "n_documents", "n_bytes", "shards", "tokenizer"):
        if field not in manifest:
            raise ValueError(f"{where}: manifest has no {field!r} field")
    if manifest["dtype"] not in DTYPES:
        raise ValueError(f"{where}: dtype {manifest['dtype']!r}; choose one of {list(DTYPES)}")
    # a hand-edited manifest must fail here, by name, not as a KeyError where a field is read
    if not isinstance(manifest["tokenizer"], dict) or "dir" not in manifest["tokenizer"]:
        raise ValueError(f"{where}: manifest has no 'tokenizer.dir' field (the saved tokenizer's folder)")
    if not isinstance(manifest["shards"], list):
        raise ValueError(f"{where}: the 'shards' field is a {type(manifest['shards']).__name__}, not a list")
    for i, shard in enumerate(manifest["shards"]):
        for field in ("file", "n_tokens"):
            if not isinstance(shard, dict) or field not in shard:
                raise ValueError(f"{where}: shards[{i}] has no {field!r} field")
    total = sum(int(s["n_tokens"]) for s in manifest["shards"])
    if total != int(manifest["n_tokens"]):
        raise ValueError(f"{where}: shards hold {total} tokens but n_tokens says {manifest['n_tokens']}")


def _window_tensor(tokens: Any, start: int, length: int) -> Any:
    import torch

    chunk = tokens[start : start + length]
    if isinstance(chunk, torch.Tensor):
        return chunk.long()
    # uint16/uint32 have no torch equivalent everywhere; int64 is what embeddings take
    return torch.from_numpy(np.asarray(chunk).astype(np.int64))


def get_batch(tokens: Any, batch_size: int, seq_len: int, generator: Any, device: Any = None) -> tuple[Any, Any]:
    """Random windows: ``(x, y)`` int64 tensors of shape (B, T), ``y`` = ``x`` shifted by one.

    ``tokens`` is anything 1-D with ``len`` and slicing (``TokenData``, a numpy array or
    memmap, a tensor). Window starts are uniform over all N - T positions and drawn
    from ``generator`` (a ``torch.Generator``), so a seeded generator gives the same
    batches every run.
    """
    import torch

    n = len(tokens)
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
    if n < seq_len + 1:
        raise ValueError(f"a stream of {n} tokens is too short for windows of seq_len + 1 = {seq_len + 1}")
    starts = torch.randint(0, n - seq_len, (batch_size,), generator=generator)
    chunk = torch.stack([_window_tensor(tokens, int(s), seq_len + 1) for s in starts])  # (B, T + 1)
    x, y = chunk[:, :-1], chunk[:, 1:]  # (B, T)
    if device is not None:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    return x.contiguous(), y.contiguous()


def eval_batches(
    tokens: Any, batch_size: int, seq_len: int, max_tokens: int | None = None
) -> Iterator[tuple[Any, Any]]:
    """Every target of the stream exactly once, in order: ``(x, y)`` int64 tensors.

    The N tokens give N - 1 targets, cut into non-overlapping windows of T. Full
    windows come B to a batch, consecutive in the stream (the last full batch may have
    fewer rows); a final remainder of r < T targets comes last as one (1, r) batch.
    Weight each batch's mean loss by ``y.numel()`` to get the mean over the split.
    ``max_tokens`` caps the number of targets (for a quick evaluation of a prefix).
    """
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
    if max_tokens is not None and max_tokens < 0:
        # a negative cap would make divmod give negative windows and a bogus remainder batch
        raise ValueError(f"max_tokens must be >= 0 (or None for every target), got {max_tokens}")
    n_targets = max(len(tokens) - 1, 0)
    if max_tokens is not None:
        n_targets = min(n_targets, int(max_tokens))
    n_windows, rest = divmod(n_targets, seq_len)
    for first in range(0, n_windows, batch_size):
        rows = min(batch_size, n_windows - first)
        chunk = _window_tensor(tokens, first * seq_len, rows * seq_len + 1)
        x = chunk[:-1].view(rows, seq_len)  # (B, T)
        y = chunk[1:].reshape(rows, seq_len)  # (B, T)
        yield x, y
    if rest:
        chunk = _window_tensor(tokens, n_windows * seq_len, rest + 1)
        yield chunk[:-1].view(1, rest), chunk[1:].reshape(1, rest)
