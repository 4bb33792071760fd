# Copyright (C) 2026 anomalib-bayes-pfl contributors
# SPDX-License-Identifier: MIT

"""Writing a file so that a kill at any moment leaves the previous file or the new one, whole.

Checkpoints, the converted CLIP weights and the prediction report all go through :func:`atomic_write`: the bytes
go to a temporary file in the destination's folder (same filesystem, so the final rename is atomic), are flushed and
synced, and the file is renamed over the destination; the folder entry is synced too. Temporary files that killed
writes left behind are removed by the next write of the same file.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

TEMPORARY_MARK = ".tmp-"
"""Temporary files are ``.<name>.tmp-<random>`` beside the destination."""


def _remove_orphans(path: Path) -> None:
    """Remove temporary files that killed writes of ``path`` left behind."""
    for orphan in path.parent.glob(f".{path.name}{TEMPORARY_MARK}*"):
        with contextlib.suppress(FileNotFoundError):
            orphan.unlink()


def _sync_folder(folder: Path) -> None:
    """Make the rename durable (not every platform can sync a folder)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write`` on a temporary binary file beside ``path``, then put it in place atomically.

    If ``write`` raises, ``path`` is left as it was and the temporary file is removed.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> atomic_write(folder / "a.txt", lambda file: file.write(b"done")).read_text()
        'done'
        >>> sorted(p.name for p in folder.iterdir())
        ['a.txt']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    temporary = path.parent / f".{path.name}{TEMPORARY_MARK}{uuid.uuid4().hex}"
    try:
        with temporary.open("wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        temporary.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    _sync_folder(path.parent)
    return path


def _write_csv(header: Sequence[str], rows: Iterable[Sequence[str]], file: BinaryIO) -> None:
    r"""``header`` and ``rows`` as UTF-8 CSV; undecodable bytes become ``\xNN`` rather than failing the write."""
    text = io.TextIOWrapper(file, encoding="utf-8", errors="backslashreplace", newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    text.flush()
    text.detach()  # leave the binary file open for atomic_write to sync and close


def atomic_write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> Path:
    """Write a UTF-8 CSV table with :func:`atomic_write` (reports that a reader may open at any moment)."""
    return atomic_write(path, functools.partial(_write_csv, header, rows))
