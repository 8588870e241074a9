"""Console pages for the rest of the watch: channels, links, transcript, exchanges,
alarms and the shift handover."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
