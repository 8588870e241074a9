"""Structured logs: one JSON object per line (structlog), to the terminal's log file."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import IO

import structlog

__all__ = ["configure_logging"]


class _Tee:
    def __init__(self, *streams: IO[str]) -> None:
        self.streams = streams
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            for stream in self.streams:
                stream.write(text)
                stream.flush()
        return len(text)

    def flush(self) -> None:
        pass


def configure_logging(log_file: Path | None, *, stderr: bool = True) -> None:
    """JSON log lines to ``log_file`` (and stderr)."""
    streams: list[IO[str]] = []
    if log_file is not None:
        streams.append(open(log_file, "a", encoding="utf-8"))  # noqa: SIM115
    if stderr:
        streams.append(sys.stderr)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=_Tee(*streams)),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
