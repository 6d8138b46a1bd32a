"""Outputs checked before any work: a command that would fail to write its results after minutes of
preparing, training or generating says so at once, in one line."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from whisper_pipeline.errors import OutputError


def check_writable(path: str | Path, flag: str, *, folder: bool = True) -> None:
    """Refuse an output that cannot be written: a folder (or, `folder=False`, a file) at `path` that is,
    or lies under, a regular file, or whose nearest existing folder refuses a new file (read-only, no
    permission). Creates nothing that stays: the probe is a temporary file, gone when it closes."""
    path = Path(path)
    wanted, other = ("folder", "file") if folder else ("file", "folder")
    if os.path.exists(path) and os.path.isdir(path) != folder:
        raise OutputError(f"{flag} {path} is a {other}, not a {wanted}")
    existing = path.absolute() if folder else path.absolute().parent
    while not os.path.exists(existing):  # False too where a parent is a file or cannot be searched
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{flag} {path} cannot be written: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise OutputError(f"{flag} {path} cannot be written: {existing}: {error.strerror}") from None
