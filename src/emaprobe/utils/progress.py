"""The one switch for progress bars.

A bar is hidden with ``quiet``, on DDP ranks other than 0, and when the environment sets
``TQDM_DISABLE`` to anything but empty, ``0``, ``false`` or ``no`` (tqdm's own variable, read
the same way everywhere: ``TQDM_DISABLE=1`` hides, ``TQDM_DISABLE=0`` shows).

With ``TQDM_DISABLE`` unset, a bar shows only where standard error is a terminal: redirected
to a file or a pipe, a bar's carriage returns pile up into one long line of redraws. There the
LM trainer prints a plain line at each log step and evaluation, and ``run roles`` one a seed,
instead (``progress_lines``), so a log still says how far a run has got. ``TQDM_DISABLE=0``
shows bars anywhere.
"""

from __future__ import annotations

import os
import sys

_SHOW = ("", "0", "false", "no")


def _env() -> str:
    return os.environ.get("TQDM_DISABLE", "").strip().lower()


def _terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty is not None and isatty())


def progress_disabled(quiet: bool = False, is_main: bool = True) -> bool:
    """Whether a progress bar should be hidden (pass the result to tqdm's ``disable``)."""
    env = _env()
    if quiet or not is_main or env not in _SHOW:
        return True
    return env == "" and not _terminal()


def progress_lines(quiet: bool = False, is_main: bool = True) -> bool:
    """Whether a long loop should print plain progress lines: its bar is hidden only because
    standard error is not a terminal (not by ``quiet``, a rank, or ``TQDM_DISABLE``)."""
    return not quiet and is_main and _env() == "" and not _terminal()
