"""What a party remembers of each message, behind an interface the caller may back.

A ``Party`` looks up the envelopes it sent (to check receipts and
acknowledgements, to answer catch-up requests) and the envelopes it received
(to spot replays and answer duplicates). ``MemoryLedger`` keeps every record
in dictionaries, which suits tests and short conversations; a terminal passes
a ledger backed by its database (``parley.service.ledger``), so that memory
does not grow with the length of the transcript. The core stays free of I/O:
it only calls these methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Ledger", "MemoryLedger", "ReceivedRecord", "SentRecord"]


@dataclass(slots=True)
class SentRecord:
    """An envelope this party sent (its bytes stay in the transcript)."""

    envelope_id: str
    channel: str
    seq: int
    recipients: tuple[str, ...]
    precedence: str
    log_index: int
    digest: str
    #: receiver -> highest ``through_seq`` of the receipts it returned for it
    receipts: dict[str, int] = field(default_factory=dict)
    #: party -> operator who acknowledged it
    acks: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ReceivedRecord:
    """An envelope this party received and logged."""

    envelope_id: str
    digest: str
    log_index: int
    channel: str
    sender: str
    seq: int


class Ledger(Protocol):
    def sent(self, envelope_id: str) -> SentRecord | None: ...

    def add_sent(self, record: SentRecord) -> None: ...

    def sent_since(self, channel: str, after_seq: int, limit: int) -> list[int]:
        """Log indexes of the envelopes sent on ``channel`` as ``after_seq`` + 1, + 2...

        Stops at the first sequence number not sent, or after ``limit``.
        """
        ...

    def received(self, envelope_id: str) -> ReceivedRecord | None: ...

    def add_received(self, record: ReceivedRecord) -> None: ...


class MemoryLedger:
    """Every record in memory."""

    __slots__ = ("_by_seq", "_received", "_sent")

    def __init__(self) -> None:
        self._sent: dict[str, SentRecord] = {}
        self._by_seq: dict[tuple[str, int], int] = {}
        self._received: dict[str, ReceivedRecord] = {}

    def sent(self, envelope_id: str) -> SentRecord | None:
        return self._sent.get(envelope_id)

    def add_sent(self, record: SentRecord) -> None:
        self._sent[record.envelope_id] = record
        self._by_seq[(record.channel, record.seq)] = record.log_index

    def sent_since(self, channel: str, after_seq: int, limit: int) -> list[int]:
        found: list[int] = []
        seq = after_seq + 1
        while len(found) < limit and (channel, seq) in self._by_seq:
            found.append(self._by_seq[(channel, seq)])
            seq += 1
        return found

    def received(self, envelope_id: str) -> ReceivedRecord | None:
        return self._received.get(envelope_id)

    def add_received(self, record: ReceivedRecord) -> None:
        self._received[record.envelope_id] = record
