"""The sequence numbers a terminal holds from one sender on one channel, as ranges.

A receipt says "I hold 1..n" (``contiguous``) and lists the first numbers
missing below the highest one seen (``missing``). Both are answered for every
envelope received, so they must not cost more as a gap gets older: the numbers
held are kept as sorted, disjoint, non-adjacent ranges, and a gap costs one
range boundary however many envelopes arrive after it. A sender that withholds
sequence number 1 and sends 15,000 more leaves two boundaries, not a set of
15,000 numbers walked on every envelope.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator

__all__ = ["MAX_MISSING", "HeldSequences"]

#: The most missing sequence numbers listed at once (as a receipt allows).
MAX_MISSING = 1000


class HeldSequences:
    """Sequence numbers held (positive integers), as ranges ``[start, end]``."""

    __slots__ = ("_ends", "_missing", "_starts")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        #: ``missing()`` as last computed; None once a number was added.
        self._missing: tuple[int, ...] | None = None
        for start, end in sorted(ranges):
            if not 1 <= start <= end:
                raise ValueError(f"[{start}, {end}] is not a range of sequence numbers")
            if self._ends and start <= self._ends[-1] + 1:
                # Overlapping or adjacent: one range (a stored form may hold either).
                self._ends[-1] = max(self._ends[-1], end)
            else:
                self._starts.append(start)
                self._ends.append(end)

    @property
    def contiguous(self) -> int:
        """The highest n such that 1..n are all held (0 when 1 is not)."""
        return self._ends[0] if self._starts and self._starts[0] == 1 else 0

    @property
    def max_seen(self) -> int:
        """The highest sequence number held (0 when none is)."""
        return self._ends[-1] if self._ends else 0

    def holds(self, seq: int) -> bool:
        i = bisect_right(self._starts, seq) - 1
        return i >= 0 and seq <= self._ends[i]

    def add(self, seq: int) -> bool:
        """Hold ``seq``; returns False if it was already held."""
        if seq < 1:
            raise ValueError(f"{seq} is not a sequence number")
        starts, ends = self._starts, self._ends
        i = bisect_right(starts, seq) - 1  # the range starting at or below seq
        if i >= 0 and seq <= ends[i]:
            return False
        joins_left = i >= 0 and ends[i] == seq - 1
        joins_right = i + 1 < len(starts) and starts[i + 1] == seq + 1
        if joins_left and joins_right:
            ends[i] = ends[i + 1]
            del starts[i + 1]
            del ends[i + 1]
        elif joins_left:
            ends[i] = seq
        elif joins_right:
            starts[i + 1] = seq
        else:
            starts.insert(i + 1, seq)
            ends.insert(i + 1, seq)
        self._missing = None
        return True

    def ranges(self) -> list[tuple[int, int]]:
        """The numbers held, as sorted ``(start, end)`` ranges (the stored form)."""
        return list(zip(self._starts, self._ends, strict=True))

    def holes(self) -> Iterator[tuple[int, int]]:
        """The ranges missing below the highest number held, lowest first."""
        below = 1
        for start, end in zip(self._starts, self._ends, strict=True):
            if start > below:
                yield below, start - 1
            below = end + 1

    def missing(self) -> tuple[int, ...]:
        """The first missing numbers below the highest held (at most ``MAX_MISSING``).

        Its cost is bounded by the holes listed, not by their width nor by how
        much was received after them, and it is computed once per change.
        """
        if self._missing is None:
            found: list[int] = []
            for start, end in self.holes():
                found.extend(range(start, min(end, start + MAX_MISSING - len(found) - 1) + 1))
                if len(found) >= MAX_MISSING:
                    break
            self._missing = tuple(found)
        return self._missing

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HeldSequences):
            return NotImplemented
        return self._starts == other._starts and self._ends == other._ends

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"HeldSequences({self.ranges()!r})"
