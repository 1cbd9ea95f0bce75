"""The token streams a training run reads, from a data spec (parsed by ``emaprobe.data.splits``)."""

from __future__ import annotations

import os

from emaprobe.data.splits import open_split, train_val_streams
from emaprobe.data.tokenizers import Tokenizer
from emaprobe.train.lm import LMData

__all__ = ["load_lm_data", "open_split"]


def load_lm_data(
    spec: str, val: str | None = None, tokenizer: Tokenizer | str | os.PathLike | None = None
) -> tuple[LMData, Tokenizer]:
    """Training and validation streams for ``spec``, and the tokenizer they were made with.

    ``ptb`` validates on ``ptb:valid``; another spec on ``val``, else on the last 1% of its stream.
    """
    train, valid, name, tok = train_val_streams(spec, val, tokenizer)
    return LMData(train=train, val=valid, bytes_per_token=valid.bytes_per_token, name=name), tok
