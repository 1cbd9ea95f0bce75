"""Tokenize a corpus with several processes into memmap shards and a manifest.

Layout of a prepared folder::

    out_dir/
      manifest.json        what TokenData reads (fields below)
      tokenizer/           the tokenizer, restorable with load_tokenizer
      tokens_00000.bin     flat little-endian uint16 (vocab <= 65536) or uint32 ids
      tokens_00001.bin     ... each at most shard_tokens ids

Each document is encoded and followed by the tokenizer's ``eot_id``, so the stream
reads ``doc0 <eot> doc1 <eot> ...``; this is PTB's Mikolov layout for the ``word``
tokenizer, where ``<eos>`` ends every sentence. The manifest records the spec, the
tokenizer (name, vocab size, eot id, folder), the dtype, the shards, ``n_tokens``,
``n_documents`` and ``n_bytes`` (UTF-8 bytes of every document plus one byte for each
separator, the denominator of bits per byte) and a run record.

Everything is written to a hidden sibling folder and renamed into place only when
complete, so ``out_dir`` holds a whole prepared corpus or nothing new: an error
removes the partial folder, and a killed run leaves only a hidden
``.<name>.partial-*`` (or, killed mid-swap, ``.<name>.old-*``) sibling and no
manifest. The next prepare of the same ``out_dir`` removes such leftovers, and says
so; a sibling whose owner (host and process id, in its ``.owner`` file) is still
alive belongs to a concurrent prepare and is left alone. A worker process whose
parent is gone (killed) exits by itself within a second.

``out_dir`` is resolved first: a symlink's target is what gets replaced, and ``.``
is its real folder (refused, as is any folder that holds the working directory,
since replacing it would leave the caller in a deleted folder).
"""

from __future__ import annotations

import glob
import hashlib
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from emaprobe.data.readers import iter_documents, spec_identity
from emaprobe.data.tokenizers import Tokenizer, load_tokenizer, resolve_tokenizer
from emaprobe.data.tokens import FORMAT, FORMAT_VERSION, MANIFEST, TokenData
from emaprobe.utils import atomic_write_json, progress_disabled, run_record
from emaprobe.utils.io import file_in_the_way

DEFAULT_SHARD_TOKENS = 100_000_000
CHUNK_CHARS = 1 << 20  # text sent to a worker at a time: big enough to hide IPC cost
ORPHAN_POLL_S = 1.0  # how often a worker checks that the prepare that started it still runs
BYTES_RULE = "utf-8 bytes of each document + 1 per document for its end-of-text separator"

_worker_tokenizer: Tokenizer | None = None


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def encode_documents(tokenizer: Tokenizer, docs: list[str], dtype: np.dtype) -> tuple[np.ndarray, int, int]:
    """``(ids with eot_id after each document, number of documents, n_bytes)``."""
    encoded = tokenizer.encode_batch(docs)
    total = sum(len(ids) for ids in encoded) + len(docs)
    out = np.empty(total, dtype=dtype)
    pos = 0
    for ids in encoded:
        out[pos : pos + len(ids)] = ids
        pos += len(ids)
        out[pos] = tokenizer.eot_id
        pos += 1
    n_bytes = sum(len(d.encode("utf-8")) for d in docs) + len(docs)
    return out, len(docs), n_bytes


def _init_worker(tokenizer_dir: str, parent_pid: int) -> None:
    global _worker_tokenizer
    # Ctrl-C reaches the whole process group; the parent decides what stops. A worker it killed while starting
    # broke the pool, and prepare then hung at exit on a chunk left in a pipe no worker read
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a parent killed by SIGTERM/SIGKILL never shuts the pool down, and its workers would wait
    # on their task queue for good; polling getppid works on every POSIX system (prctl is Linux's)
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), name="orphan-watchdog", daemon=True).start()
    # each worker is one of N processes already; HF tokenizers' own thread pool would oversubscribe
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = load_tokenizer(tokenizer_dir)


def _exit_when_orphaned(
    parent_pid: int,
    poll_s: float = ORPHAN_POLL_S,
    getppid: Callable[[], int] = os.getppid,
    sleep: Callable[[float], None] = time.sleep,
    exit_now: Callable[[int], None] = os._exit,
) -> None:
    """Poll until the parent is no longer ``parent_pid``, then end the process with status 1.

    An orphan is re-parented (to init or a subreaper), so its ppid changes. ``parent_pid``
    comes from the parent itself: a parent dead before this starts is caught too.
    """
    while getppid() == parent_pid:
        sleep(poll_s)
    exit_now(1)  # os._exit: no atexit or pool cleanup, which would wait on the dead parent


def _encode_in_worker(docs: list[str], dtype_name: str) -> tuple[np.ndarray, int, int]:
    assert _worker_tokenizer is not None, "worker started without _init_worker"
    return encode_documents(_worker_tokenizer, docs, np.dtype(dtype_name))


def _chunks(docs: Iterable[str], max_chars: int | None = None) -> Iterator[list[str]]:
    max_chars = CHUNK_CHARS if max_chars is None else max_chars
    chunk: list[str] = []
    size = 0
    for doc in docs:
        chunk.append(doc)
        size += len(doc)
        if size >= max_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class _ShardWriter:
    """Appends ids to ``tokens_#####.bin`` files of at most ``shard_tokens`` ids each."""

    def __init__(self, folder: Path, dtype: np.dtype, shard_tokens: int) -> None:
        self.folder, self.dtype, self.shard_tokens = folder, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._file = None

    def _open_next(self) -> None:
        self.close()
        name = f"tokens_{len(self.shards):05d}.bin"
        self._file = open(self.folder / name, "wb")
        self.shards.append({"file": name, "n_tokens": 0})

    def write(self, ids: np.ndarray) -> None:
        pos = 0
        while pos < len(ids):
            if self._file is None or self.shards[-1]["n_tokens"] == self.shard_tokens:
                self._open_next()
            room = self.shard_tokens - self.shards[-1]["n_tokens"]
            part = ids[pos : pos + room]
            self._file.write(part.astype(self.dtype.newbyteorder("<"), copy=False).tobytes())
            self.shards[-1]["n_tokens"] += len(part)
            pos += len(part)

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


def _encoded_chunks(
    chunks: Iterator[list[str]], tokenizer: Tokenizer, tokenizer_dir: Path, dtype: np.dtype, workers: int
) -> Iterator[tuple[np.ndarray, int, int]]:
    """Encoded chunks in corpus order; with workers > 1, a bounded window of them in flight."""
    if workers <= 1:
        for chunk in chunks:
            yield encode_documents(tokenizer, chunk, dtype)
        return
    # spawn: workers import only emaprobe.data (no torch), and no parent threads are forked.
    # An executor, not multiprocessing.Pool: Pool.terminate(), which its ``with`` calls when the
    # consumer stops early (an error, Ctrl-C), could hang for good waiting on a queue lock a
    # worker held (seen in CI, test_interrupt_mid_write_leaves_no_files); the executor cancels
    # what has not started and waits for at most the 2 x workers chunks in flight.
    ctx = mp.get_context("spawn")
    initargs = (str(tokenizer_dir), os.getpid())
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=initargs)
    pending: deque = deque()
    done = False
    try:
        # Pool.imap would read the whole corpus ahead into its queue; a window keeps memory bounded
        for chunk in chunks:
            pending.append(pool.submit(_encode_in_worker, chunk, dtype.name))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
        done = True
    except BrokenProcessPool as err:  # from result() or, once broken, from submit()
        # ChildProcessError, an OSError, so the command line prints one line; prepare's own
        # handler removes the staging folder on the way out
        raise ChildProcessError(
            "a tokenizer worker process died (killed, or out of memory?); prepare stopped and removed "
            "its partial output"
        ) from err
    finally:
        if done:
            pool.shutdown(wait=True)
        else:
            _abandon(pool, pending)


def _abandon(pool: ProcessPoolExecutor, pending: deque) -> None:
    """Stop the pool of a prepare that stopped early (an error, Ctrl-C): nothing more starts, and the workers end
    now. Waiting for the chunks in flight instead could wait for good where a worker had died: a chunk stays in a
    pipe that no worker reads, and the queue's feeder thread, which the interpreter joins at exit, with it."""
    for future in pending:
        future.cancel()
    processes = list((getattr(pool, "_processes", None) or {}).values())  # the executor keeps no public list
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        proc.terminate()
    for proc in processes:
        proc.join(timeout=5)


def prepare(
    spec: str,
    tokenizer: Tokenizer | str | os.PathLike,
    out_dir: str | os.PathLike,
    workers: int | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    overwrite: bool = False,
    quiet: bool = False,
    **tokenizer_options: Any,
) -> dict[str, Any]:
    """Tokenize data ``spec`` into ``out_dir``; return the manifest (see the module docstring).

    ``tokenizer`` is a ``Tokenizer``, a saved tokenizer folder, or a registry name built
    with ``tokenizer_options``. ``workers`` defaults to the CPU count; 1 encodes in this
    process. The shards are identical for any number of workers. Workers are spawned
    processes, so a script that calls this with workers > 1 needs the usual
    ``if __name__ == "__main__":`` guard.
    """
    out = resolve_out(out_dir)
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
    _check_target(out, overwrite)  # before the tokenizer, which may train on the whole corpus
    tok = resolve_tokenizer(tokenizer, **tokenizer_options)
    docs = iter_documents(spec)  # a spec that names nothing fails before any file is made
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    (staging / OWNER).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    _chmod_like_mkdir(staging)
    try:
        manifest = _prepare_into(staging, spec, tok, docs, workers, shard_tokens, quiet)
        _swap_into_place(staging, out, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


OWNER = ".owner"  # "<host> <pid>" of the prepare writing a staging folder
STALE_AFTER_S = 60.0  # an owner-less staging folder younger than this may be starting up


def _owner_alive(folder: Path) -> bool:
    """Whether the prepare that writes ``folder`` still runs (unknowable on another host: assumed so)."""
    try:
        host, pid = (folder / OWNER).read_text().split()
        pid_n = int(pid)
    except (OSError, ValueError):
        # no owner file: a prepare of an older version, or one between mkdtemp and the write
        try:
            return time.time() - folder.stat().st_mtime < STALE_AFTER_S
        except OSError:
            return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid_n, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a live process of another user
    return True


def _folder_bytes(folder: Path) -> int:
    total = 0
    for p in folder.rglob("*"):
        try:
            total += p.stat().st_size if p.is_file() else 0
        except OSError:
            pass
    return total


def clean_stale_partials(out: str | os.PathLike, announce: bool = True) -> list[Path]:
    """Remove what killed prepares of ``out`` left beside it; returns the removed folders.

    Those are the hidden ``.<name>.partial-*`` staging folders and ``.<name>.old-*``
    trash folders whose owner no longer runs. Each removal is printed to stderr.
    """
    out = resolve_out(out)
    if not out.parent.is_dir():
        return []
    removed = []
    name = glob.escape(out.name)  # an out name with [ or ] must match itself, not a class
    for pattern in (f".{name}.partial-*", f".{name}.old-*"):
        for folder in sorted(out.parent.glob(pattern)):
            if not folder.is_dir() or folder.is_symlink():
                continue
            if pattern.endswith("partial-*") and _owner_alive(folder):
                continue
            if pattern.endswith("old-*") and time.time() - folder.stat().st_mtime < STALE_AFTER_S:
                continue  # a concurrent prepare may be swapping right now
            size = _folder_bytes(folder)
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
            if announce:
                print(f"prepare {out}: removed {folder.name}, {size:,} bytes left by an earlier prepare that was "
                      "killed", file=sys.stderr, flush=True)
    return removed


def _chmod_like_mkdir(folder: Path) -> None:
    # mkdtemp makes a private (0700) folder; the finished corpus should read like any other
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)


def resolve_out(out_dir: str | os.PathLike) -> Path:
    """The absolute, symlink-free ``out_dir``: staging goes beside the folder that gets replaced."""
    # Path(".").name is "" and a symlink's parent is not its target's: both broke the swap
    return Path(out_dir).expanduser().resolve()


def check_target(out_dir: str | os.PathLike, overwrite: bool) -> None:
    """Raise ValueError if ``out_dir`` may not receive a prepared corpus (checks only, writes nothing)."""
    _check_target(resolve_out(out_dir), overwrite)


def _check_target(out: Path, overwrite: bool) -> None:
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise ValueError(f"{out}: is the working folder or holds it; prepare replaces the whole folder, which "
                         "would leave this process in a deleted one; choose a new folder (such as a subfolder)")
    blocker = file_in_the_way(out)
    if blocker == out:
        raise ValueError(f"{out}: exists and is not a folder")
    if blocker is not None:
        raise ValueError(f"{out}: cannot be made, {blocker} is a file, not a folder")
    if not out.exists():
        return
    if (out / MANIFEST).is_file():
        if not is_corpus(out):
            raise ValueError(f"{out}: its {MANIFEST} is not an emaprobe token manifest, so the folder is not a prepared "
                             "corpus, and prepare replaces the whole folder; choose a new or empty folder")
        if not overwrite:
            raise ValueError(f"{out}: already holds a prepared corpus; pass overwrite=True (--overwrite) to replace it")
        extra = sorted(p.name for p in out.iterdir() if not _written_by_prepare(p))
        if extra:
            shown = ", ".join(extra[:4]) + (f" and {len(extra) - 4} more" if len(extra) > 4 else "")
            raise ValueError(f"{out}: holds a prepared corpus and other files too ({shown}), which replacing the folder "
                             "would delete; move them out, or choose another folder")
    elif any(out.iterdir()):
        raise ValueError(f"{out}: a non-empty folder that is not a prepared corpus; choose a new or empty folder")


def is_corpus(folder: Path) -> bool:
    """Whether ``folder`` holds a prepared corpus: a manifest.json of this format (not merely a file of that name)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def _written_by_prepare(path: Path) -> bool:
    # what a prepared corpus folder holds: the manifest, the tokenizer folder, the shards
    return path.name in (MANIFEST, "tokenizer", OWNER) or re.fullmatch(r"tokens_\d{5}\.bin", path.name) is not None


def _prepare_into(
    folder: Path, spec: str, tok: Tokenizer, docs: Iterable[str], workers: int, shard_tokens: int, quiet: bool
) -> dict[str, Any]:
    start = time.perf_counter()
    tok_dir = tok.save(folder / "tokenizer")
    dtype = token_dtype(tok.vocab_size)
    writer = _ShardWriter(folder, dtype, shard_tokens)
    n_docs = n_bytes = n_tokens = 0
    bar = tqdm(desc=f"prepare {spec}", unit="tok", unit_scale=True, disable=progress_disabled(quiet))
    try:
        for ids, d, b in _encoded_chunks(_chunks(docs), tok, tok_dir, dtype, workers):
            writer.write(ids)
            n_docs, n_bytes, n_tokens = n_docs + d, n_bytes + b, n_tokens + len(ids)
            bar.update(len(ids))
            bar.set_postfix(docs=n_docs, refresh=False)
    finally:
        writer.close()
        bar.close()
    elapsed = time.perf_counter() - start
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "spec": spec,
        "tokenizer": {
            "name": tok.name,
            "vocab_size": tok.vocab_size,
            "eot_id": tok.eot_id,
            "fingerprint": tok.fingerprint,
            "dir": "tokenizer",
        },
        "dtype": dtype.name,
        "byte_order": "little",
        "n_tokens": n_tokens,
        "n_documents": n_docs,
        "n_bytes": n_bytes,
        "bytes_rule": BYTES_RULE,
        "bytes_per_token": n_bytes / max(n_tokens, 1),
        "shards": writer.shards,
        "run": run_record(workers=workers, elapsed_s=round(elapsed, 3), tokens_per_s=round(n_tokens / elapsed, 1)),
    }
    atomic_write_json(folder / MANIFEST, manifest)
    (folder / OWNER).unlink(missing_ok=True)
    return manifest


def _swap_into_place(staging: Path, out: Path, overwrite: bool) -> None:
    trash = None
    if out.exists():
        _check_target(out, overwrite)  # again: a concurrent prepare may have finished first
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, trash / out.name)
    try:
        os.rename(staging, out)
    except OSError:
        if (out / MANIFEST).is_file():
            raise ValueError(f"{out}: already holds a prepared corpus (written by a concurrent prepare)") from None
        raise
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def _cache_name(spec: str, tok: Tokenizer) -> str:
    key = json.dumps([FORMAT_VERSION, spec, spec_identity(spec), tok.name, tok.fingerprint])
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec)[-48:].strip("_.") or "corpus"
    return f"{slug}-{tok.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def load_split(
    spec: str,
    tokenizer: Tokenizer | str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    workers: int = 1,
    quiet: bool = True,
    **tokenizer_options: Any,
) -> TokenData:
    """A split as ``TokenData`` without a separate prepare step.

    Without ``cache_dir`` the corpus is tokenized in memory (fine for PTB: about a
    second). With it, the split is prepared once into ``cache_dir/<spec>-<tokenizer>-<key>``,
    where the key hashes the spec, its files' sizes and times and the tokenizer, and is
    memory-mapped from there afterwards.

    ``load_split("ptb:valid", "word")`` builds the word vocabulary from PTB's train split.
    """
    tok = resolve_tokenizer(tokenizer, **tokenizer_options)
    if cache_dir is not None:
        path = Path(cache_dir).expanduser() / _cache_name(spec, tok)
        if not (path / MANIFEST).is_file():
            try:
                prepare(spec, tok, path, workers=workers, quiet=quiet)
            except ValueError:
                # DDP ranks may all fill the cache at once; the first to finish wins
                if not (path / MANIFEST).is_file():
                    raise
        return TokenData(path)
    dtype = token_dtype(tok.vocab_size)
    parts, n_docs, n_bytes = [], 0, 0
    for chunk in _chunks(iter_documents(spec)):
        ids, d, b = encode_documents(tok, chunk, dtype)
        parts.append(ids)
        n_docs, n_bytes = n_docs + d, n_bytes + b
    return TokenData.from_array(np.concatenate(parts), tok, n_bytes=n_bytes, n_documents=n_docs, spec=spec)
