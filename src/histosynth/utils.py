"""Small helpers shared by every stage: atomic outputs, logging setup, seeding."""
from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import random
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A killed or failing job therefore never leaves a file that looks finished; the temporary
    file a killed process left for the same path is removed when the path is next written.
    The file's data is flushed to disk (``fsync``) before the rename and the folder's entry
    after it, so a power cut leaves either the old file or the complete new one, not a
    renamed file whose blocks never reached the disk (ext4 ``data=writeback``, XFS)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def fsync_dir(path) -> None:
    """Make the names in a folder durable (its own fsync; not its files')."""
    _fsync(Path(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def fsync_path(path) -> None:
    """Flush a file, or a folder written as one output (its files, then itself), to stable
    storage. Filesystems that cannot fsync a folder are left be."""
    path = Path(path)
    if path.is_dir():
        for child in path.iterdir():
            if child.is_file() and not child.is_symlink():
                _fsync(child, os.O_RDONLY)
        fsync_dir(path)
    elif path.exists():
        _fsync(path, os.O_RDONLY)


def _fsync(path: Path, flags: int) -> None:
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # e.g. a folder on a filesystem without directory fsync
        pass
    finally:
        os.close(fd)


def _remove_stale_tmp(path: Path) -> None:
    """Delete `.<name>.<pid>.tmp` beside `path` for processes that no longer run (SIGKILL skips
    the cleanup in atomic_path)."""
    for old in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = old.name[len(path.name) + 2:-4]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            old.unlink(missing_ok=True)
        except PermissionError:  # alive, someone else's
            pass


def file_hash(path, algorithm: str = "md5") -> str:
    """Hex digest of a file, streamed in constant memory."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def md5_of(path) -> str:
    return file_hash(path, "md5")


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # torch is a hard dependency; this only guards odd installs
        pass


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not verbose:  # libvips logs every thread pool at INFO; matplotlib its font cache
        for noisy in ("pyvips", "matplotlib"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


class UserError(Exception):
    """An error caused by input or configuration: printed without a traceback, exit code 2."""


def release_free_memory() -> None:
    """Give freed heap memory back to the system (glibc ``malloc_trim``); no-op elsewhere.

    glibc raises its mmap threshold after the first large frees, and from then on tile-sized
    buffers are recycled inside the heap, whose top is trimmed rarely: over a long tiling run
    resident memory creeps up with the slide's size although nothing is kept. Calling this
    every few dozen tiles keeps peak memory flat (measured in benchmarks/tiling.py)."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util
        import sys

        _LIBC = False
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _LIBC = lib if hasattr(lib, "malloc_trim") else False
            except OSError:  # another libc
                _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None
