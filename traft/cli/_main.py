"""The console script: run the Click app, and turn every expected failure
into one ``error: ...`` line on stderr and an exit code."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence

import click
import trio

from .._errors import RaftError
from ._common import CliError, one_line

EXPECTED = (CliError, RaftError, OSError, trio.TooSlowError, ValueError)


def describe(exc: BaseException) -> str:
    """The one line saying what went wrong."""
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    text = str(exc)
    if not text:
        return type(exc).__name__
    if isinstance(exc, RaftError) and type(exc).__name__ not in ("ClientError", "TransportError",
                                                                  "CliError", "RaftError",
                                                                  "StoreError"):
        return f"{type(exc).__name__}: {text}"
    return text


def _fail(message: str, code: int, exc: BaseException | None, verbose: bool) -> None:
    if verbose and exc is not None:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``traft`` console script."""
    from ._app import cli

    args = list(sys.argv[1:] if argv is None else argv)
    before_dashdash = args[:args.index("--")] if "--" in args else args
    verbose = ("-v" in before_dashdash or "--verbose" in before_dashdash
               or os.environ.get("TRAFT_VERBOSE", "") not in ("", "0"))
    if not args:  # bare "traft": the help, not an error
        args = ["--help"]
    try:
        result = cli.main(args=args, prog_name="traft", standalone_mode=False)
    except click.UsageError as exc:
        hint = ""
        if exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        _fail(exc.format_message() + hint, exc.exit_code, exc, verbose=False)
    except click.Abort as exc:
        _fail("aborted", 1, exc, verbose)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code, exc, verbose)
    except EXPECTED as exc:
        code = exc.exit_code if isinstance(exc, CliError) else 1
        _fail(describe(exc), code, exc, verbose)
    except KeyboardInterrupt as exc:
        _fail("interrupted", 130, exc, verbose)
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        first = next((e for e in leaves if isinstance(e, EXPECTED)), None)
        if first is not None and len(leaves) == 1:
            _fail(describe(first), 1, group, verbose)
        _fail(f"unexpected error: {group!r}", 1, group, True)
    except Exception as exc:  # a bug: say so, with the details
        _fail(f"unexpected error: {exc!r} (please report it)", 1, exc, True)
    sys.exit(result if isinstance(result, int) else 0)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        elif not isinstance(exc, trio.Cancelled):
            out.append(exc)
    return out
