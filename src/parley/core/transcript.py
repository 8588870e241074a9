"""The transcript: one append-only Merkle log per terminal.

Every envelope the terminal sent or received, and every receipt it issued or
accepted, is one entry. An entry is a one-byte type tag followed by the
exact bytes that were signed, so an auditor holding the entries can recompute
every leaf hash (``parley.merkle.leaf_hash``) and every checkpoint root.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum

from parley.errors import SchemaViolation, UsageError
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
    """The Merkle tree of every entry, and the entries not yet handed to the store.

    By default every entry stays in memory. A terminal gives a ``loader``
    that reads an entry back from its store and calls ``evict()`` once the
    store holds everything appended so far: from then on only the tree (32
    bytes a leaf) stays in memory.
    """

    __slots__ = ("_base", "_entries", "_loader", "_tree")

    def __init__(self, loader: Callable[[int], bytes] | None = None) -> None:
        self._tree = MerkleLog()
        self._entries: list[bytes] = []
        self._base = 0  # index of _entries[0]
        self._loader = loader

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

    def append_leaf(self, leaf: bytes) -> int:
        """Resume: add a stored entry by its leaf hash (its bytes stay in the store)."""
        if self._entries or self._loader is None:
            raise UsageError("only a transcript with a loader and nothing held resumes by leaf")
        index = self._tree.append(leaf)
        self._base = self._tree.size
        return index

    def entry(self, index: int) -> bytes:
        if not 0 <= index < self._tree.size:
            raise IndexError(f"no transcript entry {index} (size {self._tree.size})")
        if index >= self._base:
            return self._entries[index - self._base]
        if self._loader is None:
            raise UsageError(f"transcript entry {index} was handed to the store")
        return self._loader(index)

    def held(self) -> range:
        """Indexes of the entries still in memory."""
        return range(self._base, self._tree.size)

    def evict(self) -> None:
        """Forget the entries held so far (the store has them); needs a loader."""
        if self._loader is None:
            raise UsageError("a transcript without a loader keeps its entries")
        self._entries.clear()
        self._base = self._tree.size

    def root(self) -> bytes:
        return self._tree.root()
