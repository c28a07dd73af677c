"""Disk space guard of the store: the low-disk mark and the ``<store>.reserve`` file.

Invariants of this module (store invariant 10):

* The store counts as low on disk while the file system holding it has less
  than ``min_free_bytes`` available *and* free blocks plus the file's own
  free pages are below it too; once low, it stays low until a quarter more is
  free (hysteresis, so a store hovering at the mark does not flap).
* The reserve is a preallocated file (``posix_fallocate``, never sparse) of
  ``reserve_bytes``. It is created only when ``reserve_bytes`` plus
  ``min_free_bytes`` are free, so creating it never makes the disk low.
* It is released (deleted) only so that a cursor move, the one thing that
  deletes delivered rows, can proceed on a full disk, or so that the store can
  open at all; it is re-created as soon as there is room again.
* Unknown free space (``statvfs`` failing) never blocks the store: SQLite's
  own SQLITE_FULL still guards every write.

Held by ``tests/test_store_disk_full.py`` on a real small file system.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Final

import structlog

from gateway.core.throttle import LogThrottle

log = structlog.get_logger(__name__)

#: Defaults of the disk guards.
MIN_FREE_BYTES: Final = 64 * 1024**2
RESERVE_BYTES: Final = 8 * 1024**2


class DiskGuard:
    """Free-space checks and the reserve file of one store (owned by ``Store``)."""

    __slots__ = ("_dir", "_log", "_low", "_released", "min_free_bytes", "reserve_bytes",
                 "reserve_path")

    def __init__(self, path: Path, *, min_free_bytes: int, reserve_bytes: int,
                 throttle: LogThrottle) -> None:
        self._dir = path.parent
        self.min_free_bytes = min_free_bytes
        self.reserve_bytes = reserve_bytes
        self.reserve_path = path.with_name(path.name + ".reserve")
        self._log = throttle
        self._low = False
        self._released = False

    def fs_free(self) -> int:
        """Bytes available to this process on the store's file system."""
        try:
            st = os.statvfs(self._dir)
        except OSError:
            return 1 << 62  # unknown: do not block on it; SQLITE_FULL still guards
        return int(st.f_bavail) * int(st.f_frsize)

    def room(self, conn: sqlite3.Connection) -> int:
        """Bytes new rows can still use: free file-system space plus the file's free pages."""
        free = self.fs_free()
        with contextlib.suppress(sqlite3.Error, AttributeError):
            pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
            free += int(pages) * int(conn.execute("PRAGMA page_size").fetchone()[0])
        return free

    def low(self, conn: sqlite3.Connection) -> bool:
        """True while nothing may be admitted for lack of disk space (with hysteresis)."""
        mark = self.min_free_bytes
        if self._low:
            mark += mark // 4
        # The common case costs one statvfs and no query.
        low = mark > 0 and self.fs_free() < mark and self.room(conn) < mark
        self._low = low
        return low

    def release_reserve(self, why: str) -> bool:
        """Delete the reserve file so its blocks can be used; True when it existed."""
        try:
            size = self.reserve_path.stat().st_size
            self.reserve_path.unlink()
        except FileNotFoundError:
            return False
        except OSError as err:
            log.error("store_reserve_release_failed", path=str(self.reserve_path),
                      error=str(err))
            return False
        log.warning("store_reserve_released", path=str(self.reserve_path), bytes=size,
                    reason=why)
        self._released = True
        return True

    def ensure_reserve(self) -> bool:
        """Create the reserve file if it is missing and the disk has room for it.

        Room means ``reserve_bytes`` plus ``min_free_bytes`` free. Returns True
        when the reserve exists afterwards.
        """
        if self.reserve_bytes <= 0:
            return False
        with contextlib.suppress(OSError):
            if self.reserve_path.stat().st_size >= self.reserve_bytes:
                return True
        if self.fs_free() < self.reserve_bytes + self.min_free_bytes:
            return False
        try:
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                # Really allocate the blocks: a sparse file would reserve nothing.
                os.posix_fallocate(fd, 0, self.reserve_bytes)
            finally:
                os.close(fd)
        except OSError as err:
            with contextlib.suppress(OSError):
                self.reserve_path.unlink()
            self._log.log("warning", "store_reserve_not_created", "reserve",
                          path=str(self.reserve_path), error=str(err))
            return False
        if self._released:  # a first creation at open is not news
            log.info("store_reserve_recreated", path=str(self.reserve_path),
                     bytes=self.reserve_bytes)
            self._released = False
        return True

    def reserve_size(self) -> int:
        """Bytes of the reserve file as it is now (0 when it is missing)."""
        try:
            return self.reserve_path.stat().st_size
        except OSError:
            return 0

    def short(self) -> bool:
        """True when less than ``min_free_bytes + reserve_bytes`` is free.

        Then deletes go in small checkpointed steps, so the WAL is reused
        instead of grown.
        """
        return self.fs_free() < self.min_free_bytes + self.reserve_bytes

    def checkpoint_if_short(self, conn: sqlite3.Connection) -> None:
        """Checkpoint after a delete when the disk is short, so the WAL is reused.

        Deleted pages go to the file's free list (reused by new rows, counted
        by ``room``), but only once the delete is checkpointed; then the next
        write restarts the WAL from its start (cut back to ``WAL_KEEP_BYTES``)
        instead of growing it. A PASSIVE checkpoint never waits for readers.
        Truncating the WAL to nothing would not help: the next commit must
        grow it again, from the same scarce free blocks.
        """
        if not self.short():
            return
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
