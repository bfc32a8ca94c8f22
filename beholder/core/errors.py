"""Errors caused by the user's input: shown as one line naming the file, key or option."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from omegaconf.errors import MissingMandatoryValue

from beholder.core.console import printable
from beholder.core.redact import redact


class UserError(Exception):
    """Bad input (a path, a file, an option): printed as one line, exit code 2, no traceback."""


class MissingInput(UserError, FileNotFoundError):
    pass


def required(keys: list[str]) -> str:
    """The one line for required options (``???`` in conf/) left out."""
    return f"{', '.join(keys)}: required; give {' '.join(f'{key}=...' for key in keys)}"


def exit_with(message: str) -> None:
    """The user's error as one printable line without credentials, and exit code 2."""
    print("beholder: error: " + printable(redact(" ".join(message.split()))), file=sys.stderr, flush=True)
    sys.exit(2)


@contextmanager
def exit_on_user_error():
    """For entry points: a :class:`UserError` ends the program with its message and exit code 2,
    also when it arrives wrapped (Hydra's ``instantiate`` wraps what a constructor raises)."""
    try:
        yield
    except MissingMandatoryValue as error:  # a required option not given (where Hydra's own flags skipped the check)
        exit_with(required([error.full_key]))
    except Exception as error:
        cause = error
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        exit_with(str(cause))
