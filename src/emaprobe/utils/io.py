"""Atomic writes (temporary file, fsync, rename) and the record every run saves."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync, then rename it into place.

    A reader sees the old file or the new one, never half of one; on any error the
    temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def file_in_the_way(path: str | os.PathLike) -> Path | None:
    """What stops ``path`` being, or being made, a folder: ``path`` itself or its nearest existing parent, where
    that is a file; None where nothing does (mkdir of its parents would fail with a bare "File exists")."""
    path = Path(path)
    nearest = next((p for p in (path, *path.parents) if p.exists()), None)
    return None if nearest is None or nearest.is_dir() else nearest


_TEMP = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")  # mkstemp's name in atomic_write: .NAME.XXXXXXXX.tmp


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files ``atomic_write`` leaves in ``folder`` (and the folders right inside it, such as a
    run's exported model/) when its process is killed mid-write: each as large as the file it was writing (a
    checkpoint), and nothing else removes them. Call it only where no other process writes into ``folder``.
    -> the files removed."""
    folder = Path(folder)
    found = [p for p in (*folder.glob(".*.tmp"), *folder.glob("*/.*.tmp")) if p.is_file() and _TEMP.fullmatch(p.name)]
    for path in found:
        path.unlink(missing_ok=True)
    return found


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; malformed JSON, or bytes that are not UTF-8, raise a ValueError naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: malformed JSON at line {err.lineno}: {err.msg}") from err
    except UnicodeDecodeError as err:  # its own message names the codec and byte, never the file
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}), so not JSON") from err


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git_sha() -> str | None:
    """HEAD's SHA, with ``-dirty`` when tracked files differ from it (the run was not of HEAD).

    ``EMAPROBE_GIT_SHA`` overrides it, for a copy of a tree whose git metadata was not copied along.
    """
    if os.environ.get("EMAPROBE_GIT_SHA"):
        return os.environ["EMAPROBE_GIT_SHA"]
    sha = _git("rev-parse", "HEAD")
    if not sha:
        return None
    return sha + "-dirty" if _git("status", "--porcelain", "--untracked-files=no") else sha


@contextlib.contextmanager
def pinned_git_sha() -> Iterator[None]:
    """Within the block, every run record (this process's and its children's) names HEAD as it was on
    entry: a long run then names the code it started with, even when a commit or a checkout moves
    HEAD before it writes its results. It sets ``EMAPROBE_GIT_SHA`` for the block (an explicit one
    is kept) and puts it back after."""
    if os.environ.get("EMAPROBE_GIT_SHA") or (sha := _git_sha()) is None:
        yield
        return
    os.environ["EMAPROBE_GIT_SHA"] = sha
    try:
        yield
    finally:
        os.environ.pop("EMAPROBE_GIT_SHA", None)


def device_name(device: Any = None) -> str:
    """The device a run used, as results name it: a CUDA card's name, or the CPU and its cores.
    None: the machine's first GPU where it has one (what "auto" picks), else the CPU."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{dev.type} ({os.cpu_count()} cores)" if dev.type == "cpu" else dev.type


def run_record(device: Any = None, **extra: Any) -> dict[str, Any]:
    """What every result file records: argv, git SHA, versions, host and time, plus ``extra``.

    ``device``: the one the run used (a ``--device cpu`` benchmark on a GPU machine is a CPU
    figure); None names the machine's GPU, or its CPU where it has none."""
    import torch

    from emaprobe import __version__

    rec: dict[str, Any] = {
        "emaprobe_version": __version__,
        "git_sha": _git_sha(),
        "argv": sys.argv,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "host": platform.node(),
        "device": device_name(device),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    rec.update(extra)
    return rec
