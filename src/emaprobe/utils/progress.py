"""The one switch for progress bars.

A bar is hidden with ``quiet``, on DDP ranks other than 0, and when the environment sets
``TQDM_DISABLE`` to anything but empty, ``0``, ``false`` or ``no`` (tqdm's own variable, read
the same way everywhere: ``TQDM_DISABLE=1`` hides, ``TQDM_DISABLE=0`` shows).
"""

from __future__ import annotations

import os

_SHOW = ("", "0", "false", "no")


def progress_disabled(quiet: bool = False, is_main: bool = True) -> bool:
    """Whether a progress bar should be hidden (pass the result to tqdm's ``disable``)."""
    env = os.environ.get("TQDM_DISABLE", "").strip().lower()
    return quiet or not is_main or env not in _SHOW
