"""Whether a directory can be written, asked before any work starts."""

from __future__ import annotations

import os
import tempfile


def why_unwritable(path) -> str | None:
    """None if `path` exists as a writable directory or can be created; else why not.

    The deepest part of `path` that exists must be a directory in which a file can
    be created: the probe creates one and removes it at once (`os.access` answers
    yes to root everywhere, also on read-only or virtual file systems such as
    /proc and /sys). Creates nothing that stays: a run that then writes nothing
    leaves nothing behind.
    """
    probe = os.path.abspath(os.fspath(path))
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        return f"{probe} is a file, not a directory"
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".keras-optlab-probe-"):
            pass
    except OSError as error:
        return f"no file can be created in {probe} ({error.strerror or error})"
    return None
