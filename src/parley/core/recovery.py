"""Recovering the lost tail of a terminal's own log from what its peers hold (pure).

A terminal that lost the end of its log (an old backup, a wiped table) asks
its peers for two things (docs/recovery.md, section 3):

* a witness's *mirror* of its log: the leaf hashes the witness was shown,
  which give the original order; the mirror is trusted only as far as a
  checkpoint the terminal itself signed says (its root must match);
* *candidates*: the entries the peers hold that may be entries of its log
  (envelopes it sent them or they sent it, receipts they issued for its
  envelopes).

``plan_recovery`` puts every candidate whose leaf hash is the mirror's leaf
at a missing index in that index, and lists what no peer holds. It decides
nothing about the entries' validity: the caller appends them through the
protocol state, which checks each as it would on arrival.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from parley import merkle
from parley.core.checkpoint import Checkpoint
from parley.errors import VerificationError

__all__ = ["Hole", "RecoveryPlan", "plan_recovery"]


@dataclass(frozen=True, slots=True)
class Hole:
    """A missing index that no peer could fill."""

    index: int
    leaf: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class RecoveryPlan:
    """What recovery can put back: ``entries`` fill ``start`` onward, in order."""

    start: int
    target: int
    entries: tuple[bytes, ...]
    holes: tuple[Hole, ...]

    @property
    def complete(self) -> bool:
        return not self.holes and self.start + len(self.entries) == self.target


def plan_recovery(
    own_leaves: Sequence[bytes],
    target: Checkpoint,
    mirror: Sequence[bytes],
    candidates: Iterable[bytes],
    *,
    mirror_from: str = "the witness",
) -> RecoveryPlan:
    """Order ``candidates`` into the missing indexes ``len(own_leaves)`` .. ``target.size``.

    ``target`` is a checkpoint this terminal signed (the caller checked the
    signature); ``mirror`` a witness's leaf hashes of this log, at least
    ``target.size`` long. The mirror must hash to the target's root and agree
    with every leaf the terminal still holds; otherwise nothing is planned.
    Entries are placed up to the first hole; every hole is listed.
    """
    size = target.size
    start = len(own_leaves)
    if len(mirror) < size:
        raise VerificationError(
            f"{mirror_from} holds {len(mirror)} leaf hashes of this log, fewer than the "
            f"{size} of checkpoint {size}"
        )
    leaves = list(mirror[:size])
    if size and merkle.root(leaves) != target.root:
        raise VerificationError(
            f"the leaf hashes {mirror_from} holds do not hash to this terminal's own "
            f"checkpoint {size}: they are not its log"
        )
    for index, leaf in enumerate(own_leaves[:size]):
        if leaf != leaves[index]:
            raise VerificationError(
                f"this terminal's entry {index} is not the entry {mirror_from} witnessed at "
                f"that index: the surviving log was changed, recovery cannot put it right"
            )
    by_leaf: dict[bytes, bytes] = {}
    for entry in candidates:
        by_leaf.setdefault(merkle.leaf_hash(entry), entry)
    entries: list[bytes] = []
    holes: list[Hole] = []
    for index in range(start, size):
        found = by_leaf.get(leaves[index])
        if found is None:
            holes.append(Hole(index, leaves[index], "no peer holds an entry with this leaf hash"))
        elif not holes:
            entries.append(found)
    return RecoveryPlan(start, size, tuple(entries), tuple(holes))
