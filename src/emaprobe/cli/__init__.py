"""The ``emaprobe`` command line.

Every module in this package that defines ``register(subparsers)`` adds one
subcommand; ``register`` creates the subparser and sets ``func`` to a callable that
takes the parsed ``argparse.Namespace`` and returns an exit code. Adding a
subcommand is adding a file.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import pkgutil
import signal
import sys
import threading
from collections.abc import Iterator

from emaprobe.utils.io import pinned_git_sha

EPILOG = """\
examples:
  emaprobe demo                         everything the project can do, small, on CPU
  emaprobe bench scan --device cpu      EMA scan speed against scipy's lfilter
  emaprobe <command> --help             what a command takes

Data folders are found through arguments or the EMAPROBE_DATA environment variable
(the folder that holds text/, gpt2/ and ud-english-ewt/).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emaprobe",
        description="What fixed-coefficient recurrent context (EMA traces) keeps and loses: "
        "reproduce the claims of 'EMA Is Not All You Need' (arXiv 2604.08556) and go past them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from emaprobe import __version__

    parser.add_argument("--version", action="version", version=f"emaprobe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with pinned_git_sha(), sigterm_as_interrupt():  # results name the code the command started with
            return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"emaprobe {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a path the system refused: a file where a folder goes, no permission, disk full
        print(f"emaprobe {args.command}: error: {_os_error_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        why = f": {err}" if str(err) else ""
        hint = getattr(args, "resume_hint", "")
        print(f"emaprobe {args.command}: interrupted{why}" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside, SIGTERM raises KeyboardInterrupt, so a command stopped by ``timeout`` or a scheduler cleans up and
    says so as on Ctrl-C (prepare removes its staging folder; a run between its stages prints what stopped, exit
    130). SIGTERM's default ends the process at once, with no message and its partial files left. Signal handlers
    can only be set from the main thread: elsewhere this does nothing. The previous handler is restored on the way
    out; code that handles SIGTERM itself (the trainer, ``run_pool``) sets its own inside."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _os_error_line(err: OSError) -> str:
    """``path: reason`` for an OSError from the system; its own message for one raised with a sentence."""
    if err.filename is None:
        return str(err)
    where = f"{err.filename}" + (f" -> {err.filename2}" if err.filename2 is not None else "")
    return f"{where}: {err.strerror or err}"


if __name__ == "__main__":
    sys.exit(main())
