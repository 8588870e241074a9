"""Console pages for messages: inbox, outbox, one message, compose, the FLASH alert."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
