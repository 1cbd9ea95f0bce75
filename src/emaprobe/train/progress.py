"""When to show a progress bar: not with ``quiet``, not on DDP ranks other than 0, not under TQDM_DISABLE."""

from __future__ import annotations

import os


def progress_disabled(quiet: bool = False, is_main: bool = True) -> bool:
    env = os.environ.get("TQDM_DISABLE", "").strip().lower()
    return quiet or not is_main or env not in ("", "0", "false", "no")
