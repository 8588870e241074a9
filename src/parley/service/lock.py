"""``DIR/serve.lock``: one process at a time owns a terminal's protocol state."""

from __future__ import annotations

import fcntl
from typing import IO

from parley.config import DataDir

__all__ = ["ServeLock"]


class ServeLock:
    """An exclusive lock on ``DIR/serve.lock``: one process owns a terminal's state."""

    def __init__(self, data: DataDir) -> None:
        self.path = data.lock_file
        self._handle: IO[str] | None = None

    def acquire(self) -> bool:
        handle = open(self.path, "a+")  # noqa: SIM115 - held for the lock's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    @staticmethod
    def held(data: DataDir) -> bool:
        lock = ServeLock(data)
        if lock.acquire():
            lock.release()
            return False
        return True
