"""Byte-level BPE trained on a corpus with Hugging Face ``tokenizers``.

The same recipe as GPT-2's tokenizer (byte-level pre-tokenisation, 256 byte symbols,
merges learned by frequency, ``<|endoftext|>`` as the one special token) at any
vocabulary size, trained on any data spec. Saved and restored as the library's own
``tokenizer.json``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from emaprobe.data.tokenizers.base import Tokenizer, sha256_hex

TOKENIZER_FILE = "tokenizer.json"
EOT_TEXT = "<|endoftext|>"
MIN_VOCAB = 257  # 256 byte symbols and the end-of-text token


class BPETokenizer(Tokenizer):
    """A ``tokenizers.Tokenizer`` with a byte-level BPE model; ``<|endoftext|>`` ends documents."""

    name = "bpe"

    def __init__(self, hf_tokenizer: Any, eot: str = EOT_TEXT) -> None:
        self._tok = hf_tokenizer
        eot_id = hf_tokenizer.token_to_id(eot)
        if eot_id is None:
            raise ValueError(f"BPE tokenizer has no end-of-text token {eot!r}")
        # text that spells the special token stays text; only the pipeline places eot_id
        self._tok.encode_special_tokens = True
        self.eot = eot
        self.eot_id = int(eot_id)
        self.vocab_size = int(hf_tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    @property
    def fingerprint(self) -> str:
        return sha256_hex(self._tok.to_str())

    def _save_files(self, directory: Path) -> dict[str, Any]:
        self._tok.save(str(directory / TOKENIZER_FILE))
        return {"tokenizer_file": TOKENIZER_FILE, "eot": self.eot}

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any]) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        path = directory / config.get("tokenizer_file", TOKENIZER_FILE)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the tokenizer.json of this saved tokenizer is missing")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as err:  # noqa: BLE001 - tokenizers raises its own Exception type
            raise ValueError(f"{path}: not a readable tokenizers file ({err})") from err
        return cls(hf, eot=config.get("eot", EOT_TEXT))

    @classmethod
    def create(
        cls,
        corpus: str | None = None,
        vocab_size: int = 8192,
        min_frequency: int = 2,
        tokenizer_file: str | None = None,
    ) -> BPETokenizer:
        """Train on data spec ``corpus``, or load an existing HF ``tokenizer_file``."""
        if tokenizer_file is not None:
            return cls.load(Path(tokenizer_file).parent, {"tokenizer_file": Path(tokenizer_file).name})
        if corpus is None:
            raise ValueError("the bpe tokenizer is trained: give corpus=SPEC (and vocab_size), or tokenizer_file=PATH")
        return train_bpe(corpus, vocab_size, min_frequency=min_frequency)


def train_bpe(spec: str, vocab_size: int, min_frequency: int = 2, show_progress: bool = False) -> BPETokenizer:
    """Train a byte-level BPE of ``vocab_size`` ids on the documents of data spec ``spec``."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from emaprobe.data.readers import iter_documents

    if vocab_size < MIN_VOCAB:
        raise ValueError(f"bpe vocab_size must be >= {MIN_VOCAB} (256 bytes + {EOT_TEXT}), got {vocab_size}")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    hf.train_from_iterator(iter_documents(spec), trainer=trainer)
    return BPETokenizer(hf)
