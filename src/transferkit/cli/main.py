"""``transferkit`` entry point: builds the parser from the command modules and turns errors into one line.

Every module in this package that defines ``register(subparsers)`` adds its
commands (``set_defaults(func=...)``); modules are taken in the order of their
``ORDER`` number (default 100), then by name, so a new command group needs no
edit here.  Command modules import only argparse at the top, so ``transferkit
--help`` stays fast; the heavy libraries load inside the function that runs
the command.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from pathlib import Path
from typing import Any


def command_modules() -> list:
    """The CLI modules that define ``register``, in help order."""
    import transferkit.cli as pkg

    mods = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_") or info.name == "main":
            continue
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        if hasattr(mod, "register"):
            mods.append(mod)
    return sorted(mods, key=lambda m: (getattr(m, "ORDER", 100), m.__name__))


def build_parser() -> argparse.ArgumentParser:
    from transferkit import __version__

    parser = argparse.ArgumentParser(
        prog="transferkit",
        description="Reuse pretrained networks and classic advanced architectures on your own data (offline-ready).",
        epilog="Run `transferkit COMMAND --help` for a command's options. Exit status: 0 done, 2 one `error:` line "
               "(bad input, a diverged run, an unwritable --out), 1 internal error, 130 Ctrl-C (the run's checkpoint is "
               "kept: the printed --resume command continues it), 143 SIGTERM. What each fault does: FAULTS.md.",
    )
    parser.add_argument("--version", action="version", version=f"transferkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in command_modules():
        mod.register(sub)
    return parser


def resume_command(argv: list[str]) -> str:
    """The command line that continues an interrupted run: the same one with ``--resume``."""
    import shlex

    args = list(argv)
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["transferkit", *args])


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status.

    0 ok, 2 user error (one ``error:`` line), 1 internal error, 130 interrupted
    by Ctrl-C (SIGINT), 143 stopped by SIGTERM.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    from transferkit.errors import RunInterrupted, TransferkitError

    _quiet_other_ranks()
    try:
        out = getattr(args, "out", None)
        if isinstance(out, str) and out and not getattr(args, "resume", False):
            from transferkit.core.engine import check_writable

            check_writable(out)  # an --out that cannot be written fails here, before any work
        result = args.func(args)
        return int(result or 0)
    except TransferkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RunInterrupted as err:
        hint = (f"continue with: {resume_command(argv)}" if hasattr(args, "resume")
                else "run the command again to start over")
        print(err.describe(hint), file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:  # outside training (training's own Ctrl-C is RunInterrupted above)
        print(_interrupted_line(args), file=sys.stderr)
        return 130
    except OSError as err:
        import errno

        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            return _internal(err)
        print(f"error: cannot write {err.filename or 'the output'}: {err.strerror}; files written before are kept",
              file=sys.stderr)
        return 2
    except BrokenPipeError:  # `transferkit predict ... | head`
        return 0
    except Exception as err:  # a bug: say so in one line, traceback only on request
        return _internal(err)


def _interrupted_line(args: argparse.Namespace) -> str:
    """What a Ctrl-C before the first checkpoint leaves: a run folder that a plain rerun would refuse."""
    out = getattr(args, "out", None)
    if (isinstance(out, str) and (Path(out) / "config.yaml").is_file()
            and not (Path(out) / "checkpoints" / "last.ckpt").is_file() and not (Path(out) / "model").exists()):
        return (f"interrupted (Ctrl-C) before the first checkpoint; {out} holds only this run's start: remove it "
                f"(or choose another --out) and run the command again")
    return "interrupted (Ctrl-C); nothing was finished: run the command again to start over"


class _ErrorsOnly:
    """A stderr for DDP ranks other than 0: only ``error:`` and ``internal error`` lines get through,
    prefixed with the rank (rank 0 prints progress, results and the report line for the whole job)."""

    def __init__(self, stream: Any, rank: int):
        self.stream, self.rank, self.buf = stream, rank, ""

    def write(self, text: str) -> int:
        self.buf += text
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            if line.startswith(("error:", "internal error")):
                self.stream.write(f"rank {self.rank}: {line}\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def _quiet_other_ranks() -> None:
    """Under DDP every rank runs this same command; only rank 0 talks to the user."""
    from transferkit.core.engine import process_rank

    rank = process_rank()
    if rank == 0:
        return
    os.environ["TRANSFERKIT_PROGRESS"] = "off"
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    if not os.environ.get("TRANSFERKIT_DEBUG"):  # debugging: every rank's full output and tracebacks
        sys.stderr = _ErrorsOnly(sys.stderr, rank)


def _internal(err: Exception) -> int:
    if os.environ.get("TRANSFERKIT_DEBUG"):
        raise err
    print(
        f"internal error: {type(err).__name__}: {err} (set TRANSFERKIT_DEBUG=1 for the traceback and report it)",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
