"""User-facing failures: raised where they are found, printed as one line at the command-line edge; and
how a command ends."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from functools import wraps
from typing import NoReturn

EXIT_USER_ERROR = 2


class PipelineError(Exception):
    """A problem the user can fix (a setting, a file, a credential): one line, exit code 2, no trace."""

    exit_code = EXIT_USER_ERROR


class ConfigError(PipelineError):
    """A setting is missing, unknown or invalid."""


class S3Error(PipelineError):
    """The S3 endpoint, credentials, bucket or certificate do not work."""


class AnnotationError(PipelineError):
    """The Label Studio export cannot be read or is not the full JSON export."""


class ModelError(PipelineError):
    """The model directory (or adapter) is missing, incomplete or does not match."""


class OutputError(PipelineError):
    """An output path cannot be written (under a regular file, read-only, no permission)."""


class CacheError(PipelineError):
    """The feature cache is missing, partial, or made for another model."""


def exit_on_user_error(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI entry point: a PipelineError becomes `error: <message>` on stderr and its exit code."""

    @wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except PipelineError as error:
            print(f"error: {error}", file=sys.stderr)
            return error.exit_code
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper


def exit_without_collecting(code: int) -> NoReturn:
    """End a command whose work is done, without the interpreter's exit-time garbage collections.

    At exit Python runs full cycle collections that walk every object still alive, most of them made by
    the imports (transformers, datasets, the fork server's bookkeeping): a large share of a
    prepare_data.py rerun that finds its cache current. Frozen, the objects are only freed by
    reference counting; the commands close and flush their files before they return. For scripts only:
    a process that goes on (a test run) would never collect what was alive at the freeze."""
    gc.freeze()
    sys.exit(code)
