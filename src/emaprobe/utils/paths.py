"""Where data lives: always an argument or the EMAPROBE_DATA environment variable."""

from __future__ import annotations

import os
from pathlib import Path

ENV_DATA = "EMAPROBE_DATA"


def data_root() -> Path | None:
    """The folder named by EMAPROBE_DATA (holding text/, gpt2/, ud-english-ewt/), or None."""
    root = os.environ.get(ENV_DATA)
    if not root:
        return None
    path = Path(root).expanduser()
    return path if path.is_dir() else None


def find_data(relative: str, explicit: str | os.PathLike | None = None) -> Path:
    """Resolve a data path: ``explicit`` if given, else ``$EMAPROBE_DATA/relative``.

    Raises FileNotFoundError that says how to point emaprobe at the data.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        return path
    root = data_root()
    if root is None:
        raise FileNotFoundError(
            f"no data folder: pass a path, or set {ENV_DATA} to the folder that holds {relative!r}"
        )
    path = root / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (from {ENV_DATA}={root})")
    return path
