"""The transcript: one append-only Merkle log per terminal.

Every envelope the terminal sent or received, and every receipt it issued or
accepted, is one entry. An entry is a one-byte type tag followed by the
exact bytes that were signed, so an auditor holding the entries can recompute
every leaf hash (``parley.merkle.leaf_hash``) and every checkpoint root.
"""

from __future__ import annotations

from enum import IntEnum

from parley.errors import SchemaViolation
from parley.merkle import MerkleLog, leaf_hash

__all__ = ["EntryType", "Transcript", "entry_bytes", "split_entry"]


class EntryType(IntEnum):
    ENVELOPE = 1
    RECEIPT = 2


_ENTRY_TYPES = frozenset(int(t) for t in EntryType)


def entry_bytes(kind: EntryType, raw: bytes) -> bytes:
    return bytes([kind]) + raw


def split_entry(entry: bytes) -> tuple[EntryType, bytes]:
    if not entry or entry[0] not in _ENTRY_TYPES:
        raise SchemaViolation(
            "a transcript entry starts with a type byte: 0x01 envelope or 0x02 receipt"
        )
    return EntryType(entry[0]), entry[1:]


class Transcript:
    """Entries in memory plus their Merkle tree. The store keeps the durable copy."""

    __slots__ = ("_entries", "_tree")

    def __init__(self) -> None:
        self._tree = MerkleLog()
        self._entries: list[bytes] = []

    @property
    def size(self) -> int:
        return self._tree.size

    @property
    def tree(self) -> MerkleLog:
        return self._tree

    def append(self, kind: EntryType, raw: bytes) -> int:
        entry = entry_bytes(kind, raw)
        self._entries.append(entry)
        return self._tree.append(leaf_hash(entry))

    def entry(self, index: int) -> bytes:
        return self._entries[index]

    def root(self) -> bytes:
        return self._tree.root()
