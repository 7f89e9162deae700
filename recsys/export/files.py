"""Reading the files of an artifact folder safely: confined to the folder, regular files only, never blocking.

Every file the loader reads is named relative to the artifact folder and goes through
``artifact_path``: no absolute name, no NUL, and once symlinks and ``..`` are resolved it must
lie inside the folder's real path and be a regular file (not a FIFO, device, socket or folder).
``open_regular`` opens it with ``O_NONBLOCK | O_NOFOLLOW`` and checks the opened file again
(``fstat``), so a FIFO or symlink swapped in after the check is refused instead of blocking or
leading elsewhere. Every error is an ``ArtifactError`` naming the file.

Example:
    >>> path = artifact_path("artifacts/x", "vocab/C1.arrow")   # doctest: +SKIP
    >>> with open_regular(path) as f: head = f.read(8)          # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path, PurePosixPath
from typing import BinaryIO


class ArtifactError(ValueError):
    """An artifact that cannot be served: missing, corrupted or incompatible."""


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def artifact_path(folder: str | Path, name: str) -> Path:
    """The real path of file ``name`` of the artifact in ``folder``, checked (see the module doc)."""
    root = Path(os.path.realpath(folder))
    shown = f"{folder}/{name}" if isinstance(name, str) else f"{folder}: {name!r}"
    if not isinstance(name, str) or not name or "\0" in name:
        raise ArtifactError(f"{shown}: not a file name (names in the manifest are relative paths inside the artifact)")
    if PurePosixPath(name).is_absolute() or Path(name).is_absolute():
        raise ArtifactError(f"{folder}: file {name!r} is an absolute path; an artifact names its files relative to its folder")
    real = Path(os.path.realpath(root / name))
    if root not in real.parents:
        raise ArtifactError(f"{shown} resolves to {real}, outside the artifact folder {root} (a symlink or '..' escape); refusing it")
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        raise ArtifactError(f"{shown}: missing (the artifact names it)") from None
    except OSError as exc:
        raise ArtifactError(f"{shown}: cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ArtifactError(f"{shown} is {_kind(mode)}, not a regular file; refusing to read it")
    return real


def open_regular(path: str | Path) -> BinaryIO:
    """``path`` opened for reading without blocking and without following a symlink; it must be a
    regular file when opened (a file object: close it, e.g. with ``with``)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot be opened: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ArtifactError(f"{path} is {_kind(mode)}, not a regular file; refusing to read it")
    return os.fdopen(fd, "rb")


def read_regular(path: str | Path, limit: int) -> bytes:
    """The bytes of regular file ``path`` (``open_regular``), refused when over ``limit`` bytes."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise ArtifactError(f"{path} is {size:,} bytes, over the {limit:,} bytes this file may have; refusing it")
        return f.read(limit + 1)


def sha256_of(f: BinaryIO, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    while block := f.read(chunk):
        h.update(block)
    return h.hexdigest()
