"""One gateway per store: an exclusive lock on ``<store path>.lock``.

Two gateways on one store file would both forward from the same cursors and
fight over the same MQTT sessions. The daemon therefore takes an exclusive
``flock`` on a lock file next to the store before it opens the store or
connects to anything, and writes its PID into it. The kernel drops the lock
when the process ends, however it ends (SIGKILL, power cut), so a stale lock
file never blocks a restart. The ``store ...`` operator commands do not take
the lock: they are safe while the daemon runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class StoreLocked(Exception):
    """Another process holds the store's lock."""

    def __init__(self, store: Path, lock_path: Path, pid: int | None) -> None:
        holder = f"PID {pid}" if pid is not None else "another process (PID unknown)"
        super().__init__(
            f"store {store} is in use by another gateway ({holder}, lock file {lock_path}); "
            "stop that gateway first, or give this one its own store.path"
        )
        self.store = store
        self.lock_path = lock_path
        self.pid = pid


def lock_path_for(store: str | os.PathLike[str]) -> Path:
    """The lock file of a store: ``<store path>.lock``."""
    p = Path(store)
    return p.with_name(p.name + ".lock")


class StoreLock:
    """An exclusive, non-blocking lock on a store, held until ``release``."""

    def __init__(self, store: str | os.PathLike[str]) -> None:
        self.store = Path(store)
        self.path = lock_path_for(self.store)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock and write our PID; raise ``StoreLocked`` naming the holder."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # No O_TRUNC: the holder's PID must stay readable for the message below.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise StoreLocked(self.store, self.path, pid) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent). The file stays: deleting it would race a new holder."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # still locked here, so no new holder's PID is lost
        os.close(fd)

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
