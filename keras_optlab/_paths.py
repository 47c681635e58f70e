"""Whether a directory can be written, asked before any work starts."""

from __future__ import annotations

import os


def why_unwritable(path) -> str | None:
    """None if `path` exists as a writable directory or can be created; else why not.

    Creates nothing: a run that then writes nothing leaves nothing behind.
    """
    probe = os.path.abspath(os.fspath(path))
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        return f"{probe} is a file, not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"no write permission on {probe}"
    return None
