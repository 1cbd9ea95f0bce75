"""Language-model data: corpus readers, tokenizers, token shards and batches.

    docs = iter_documents("ptb:train")                 # or a .jsonl[.xz|.gz] / .txt file, folder, glob
    tok = get_tokenizer("gpt2")                        # or "word", "bpe" (train_bpe(spec, vocab_size))
    prepare("data/*.jsonl.xz", tok, "out/", workers=4) # uint16/uint32 memmap shards + manifest.json
    train = TokenData("out/")                          # len, slicing, .tokenizer, .bytes_per_token
    x, y = get_batch(train, 8, 128, torch.Generator().manual_seed(0))   # (B, T) int64
    for x, y in eval_batches(valid, 8, 128): ...       # every target once, in order
    valid = load_split("ptb:valid", "word")            # small corpora in memory, no prepare step

Module map: ``readers`` (data specs, documents), ``tokenizers`` (registry: gpt2, word,
bpe), ``prepare`` (multiprocess tokenization, ``load_split``), ``tokens`` (TokenData,
batches), ``splits`` (a spec's training and validation streams, ``train_val_streams``).
"""

from emaprobe.data.prepare import DEFAULT_SHARD_TOKENS, load_split, prepare
from emaprobe.data.readers import PTB_SPLITS, iter_documents, resolve_files
from emaprobe.data.splits import train_val_streams
from emaprobe.data.tokenizers import (
    TOKENIZERS,
    BPETokenizer,
    GPT2Tokenizer,
    Tokenizer,
    WordTokenizer,
    get_tokenizer,
    load_tokenizer,
    resolve_tokenizer,
    train_bpe,
)
from emaprobe.data.tokens import TokenData, eval_batches, get_batch, load_tokens

__all__ = [
    "DEFAULT_SHARD_TOKENS",
    "PTB_SPLITS",
    "TOKENIZERS",
    "BPETokenizer",
    "GPT2Tokenizer",
    "TokenData",
    "Tokenizer",
    "WordTokenizer",
    "eval_batches",
    "get_batch",
    "get_tokenizer",
    "iter_documents",
    "load_split",
    "load_tokenizer",
    "load_tokens",
    "prepare",
    "resolve_files",
    "resolve_tokenizer",
    "train_bpe",
    "train_val_streams",
]
