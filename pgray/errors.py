"""User-facing errors and the one place that turns them into exit codes."""

from __future__ import annotations

import sys
from collections.abc import Callable


class PgrayError(Exception):
    """A problem with the user's input or environment. Printed without a traceback."""

    exit_code = 2


class ConfigError(PgrayError):
    """A config value is missing, unknown, of the wrong type or out of range."""


class DatasetError(PgrayError):
    """A dataset tree breaks its layout's rules; the message names the file."""


class CheckpointError(PgrayError):
    """A checkpoint cannot be read or does not fit the model."""


class ClusterError(PgrayError):
    """Ray, MLflow or storage cannot be reached or used."""

    exit_code = 3


class StorageError(ClusterError):
    """The run's storage (a folder every node mounts, s3:// or gs://) cannot be read or
    written; the message names it."""


def first_line(err: BaseException) -> str:
    """An exception as one line: its type and the first line of its message (pyarrow's and
    the cloud SDKs' messages run over many lines)."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run an entry point; user errors become one line on stderr and a non-zero exit code.

    `--debug` anywhere on the command line keeps the traceback.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    try:
        return int(main(args) or 0)
    except PgrayError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
