"""From a data spec to a training stream and a validation stream.

A spec (``readers``) is ``ptb``/``ptb:<split>``, a folder written by ``emaprobe data prepare``
(memory-mapped as is), or a text/JSONL file, folder or glob (tokenized in memory by
``prepare.load_split``).

Validation: ``ptb`` trains on ``ptb:train`` and validates on ``ptb:valid``; any other
spec validates on ``val`` when given, else on the last ``HOLDOUT_FRACTION`` of its
own stream (a model trained on the first part never sees it).

Tokenizer: the one given, else a prepared folder's own, else ``word`` for PTB (its
vocabulary built from ``ptb:train``, Mikolov's 10k) and ``gpt2`` for everything else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from emaprobe.data.prepare import load_split
from emaprobe.data.readers import is_ptb_spec, ptb_split, resolve_files
from emaprobe.data.tokenizers import Tokenizer, get_tokenizer, resolve_tokenizer
from emaprobe.data.tokens import MANIFEST, TokenData

HOLDOUT_FRACTION = 0.01


class StreamView:
    """Tokens ``[start, stop)`` of a stream, sliced like the stream itself."""

    def __init__(self, stream: Any, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= len(stream):
            raise ValueError(f"view [{start}, {stop}) outside a stream of {len(stream)} tokens")
        self.stream, self.start, self.stop = stream, start, stop
        self.bytes_per_token = getattr(stream, "bytes_per_token", None)

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, key: slice) -> Any:
        if not isinstance(key, slice):
            raise TypeError("StreamView takes slices only")
        lo, hi, step = key.indices(len(self))
        if step != 1:
            raise ValueError("StreamView slices take step 1 only")
        return self.stream[self.start + lo : self.start + max(hi, lo)]


def is_prepared(spec: str | os.PathLike) -> bool:
    return (Path(spec) / MANIFEST).is_file()


def check_spec(spec: str, flag: str = "") -> None:
    """Fail now, naming the spec (after ``flag``, the option that gave it, if any), if it names no
    data; nothing is read.

    A run checks its specs before it builds a tokenizer, so a mistyped path is reported
    as such and not as whatever building the tokenizer needed first.
    """
    try:
        if is_ptb_spec(spec):
            ptb_split(spec)
        elif not is_prepared(spec):
            resolve_files(spec)
    except (ValueError, FileNotFoundError) as err:
        if not flag:
            raise
        raise type(err)(f"{flag}: {err}") from None


def default_tokenizer(spec: str, tokenizer: Tokenizer | str | os.PathLike | None = None) -> Tokenizer:
    """The tokenizer a run on ``spec`` uses (see the module docstring)."""
    if tokenizer is not None:
        return resolve_tokenizer(tokenizer)
    if is_prepared(spec):
        return TokenData(spec).tokenizer
    return get_tokenizer("word") if is_ptb_spec(spec) else get_tokenizer("gpt2")


def open_split(spec: str, tokenizer: Tokenizer) -> TokenData:
    """One split of ``spec`` under ``tokenizer``; a prepared folder must have been made with it."""
    if is_prepared(spec):
        data = TokenData(spec)
        if data.tokenizer.fingerprint != tokenizer.fingerprint:
            raise ValueError(
                f"{spec}: prepared with tokenizer {data.tokenizer!r}, but this run uses {tokenizer!r}; "
                "prepare the data with the run's tokenizer"
            )
        return data
    return load_split(spec, tokenizer)


def train_val_streams(
    spec: str, val: str | None = None, tokenizer: Tokenizer | str | os.PathLike | None = None
) -> tuple[Any, Any, str, Tokenizer]:
    """(training stream, validation stream, a name for the pair, the tokenizer) for ``spec``.

    The streams are ``TokenData`` or ``StreamView``s of one; both have ``bytes_per_token``.
    """
    for named in (spec, val):
        if named is not None:
            check_spec(named)
    tok = default_tokenizer(spec, tokenizer)
    if is_ptb_spec(spec) and val is None:
        spec, val = ("ptb:train" if spec == "ptb" else spec), "ptb:valid"
    train = open_split(spec, tok)
    if val is not None:
        return train, open_split(val, tok), f"{spec} (val {val})", tok
    n_val = max(int(len(train) * HOLDOUT_FRACTION), 2)
    if len(train) - n_val < 2:
        raise ValueError(f"{spec}: {len(train)} tokens are too few to hold out a validation split")
    cut = len(train) - n_val
    name = f"{spec} (last {HOLDOUT_FRACTION:.0%} held out)"
    return StreamView(train, 0, cut), StreamView(train, cut, len(train)), name, tok
