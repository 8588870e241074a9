"""What a witness knows of one peer's log, and when it cosigns (docs/recovery.md §1).

Pure: no I/O, no clock. A ``LogWitness`` holds, for one peer P whose log this
terminal witnesses:

* ``observed``: every checkpoint of P's log seen, from any source (a receipt,
  an offer, one cosigned), one per size: two of the same size with different
  roots are an equivocation at once;
* ``mirror``: P's leaf hashes as far as they were verified. It is extended
  only up to a checkpoint P offered, and only if the root of the whole mirror
  equals that checkpoint's root: the mirror always ends at a checkpoint P
  signed (``head``), and the root of any prefix is the witness's own to
  compute;
* ``last_cosigned``.

The rules (C2SP tlog-cosignature: vouch for the largest consistent tree):
an offer smaller than the largest checkpoint observed is a rollback; every
observed checkpoint the mirror covers must have the root of the mirror's
prefix of its size, or P signed two different logs. A contradiction, once
found, blocks every later cosignature: it is a fact about P's keys, and it is
found again from the stored checkpoints and leaves after a restart.

What changes (new observations, new mirror leaves) is listed in ``unsaved``
and ``mirror_saved`` for the caller, who stores it before relying on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from parley.core.checkpoint import Checkpoint, parse_note
from parley.errors import (
    CheckpointRejected,
    CheckpointRollback,
    Equivocation,
    SchemaViolation,
    StaleOffer,
)
from parley.merkle import EMPTY_ROOT, MerkleLog

__all__ = [
    "LEAF_SIZE",
    "LogWitness",
    "Observation",
    "OfferPlan",
    "bare_checkpoint",
    "split_leaves",
]

LEAF_SIZE = 32
SOURCES = ("receipt", "offer", "request", "cosigned")


def bare_checkpoint(checkpoint: Checkpoint) -> Checkpoint:
    """The checkpoint with its owner's signature lines only (no cosignatures)."""
    _, signatures = parse_note(checkpoint.note)
    lines = "".join(s.line() for s in signatures if s.name == checkpoint.origin)
    note = checkpoint.body + "\n" + lines
    if note == checkpoint.note:
        return checkpoint
    return Checkpoint(checkpoint.origin, checkpoint.size, checkpoint.root, checkpoint.body, note)


def split_leaves(data: bytes, most: int) -> list[bytes]:
    """A page of leaf hashes as ``GET /v1/log/leaves`` sends it: 32 bytes each, back to back."""
    if len(data) % LEAF_SIZE:
        raise SchemaViolation(
            f"a page of leaf hashes is {len(data)} bytes, not a multiple of {LEAF_SIZE}"
        )
    if len(data) // LEAF_SIZE > most:
        raise SchemaViolation(
            f"a page of {len(data) // LEAF_SIZE} leaf hashes, when at most {most} were asked for"
        )
    return [data[i : i + LEAF_SIZE] for i in range(0, len(data), LEAF_SIZE)]


@dataclass(frozen=True, slots=True)
class Observation:
    """A checkpoint of ``owner``'s log seen for the first time: to be stored."""

    owner: str
    checkpoint: Checkpoint
    source: str


@dataclass(frozen=True, slots=True)
class OfferPlan:
    """An offered checkpoint that may be cosigned once the mirror reaches it."""

    owner: str
    checkpoint: Checkpoint
    #: The mirror's size: the leaves needed are ``start`` up to ``checkpoint.size``.
    start: int
    #: False when it is the checkpoint last cosigned (nothing new to vouch for).
    fresh: bool


def _evidence(earlier: Checkpoint, later: Checkpoint) -> dict[str, str]:
    return {"earlier": earlier.note, "later": later.note}


class LogWitness:
    """What this terminal knows of one peer's log (see the module's docstring)."""

    __slots__ = (
        "_contradicted",
        "asked",
        "last_cosigned",
        "mirror",
        "mirror_saved",
        "observed",
        "owner",
        "requested",
    )

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.mirror = MerkleLog()
        #: How much of the mirror the caller has stored.
        self.mirror_saved = 0
        self.observed: dict[int, Checkpoint] = {}
        self.last_cosigned: Checkpoint | None = None
        #: The largest checkpoint this witness showed the owner in its last request
        #: (``seen``): an honest owner's offer is at least that large. One observed
        #: after the request (a receipt crossing the offer) may be larger.
        self.asked: Checkpoint | None = None
        self.requested = False
        #: Observed checkpoints the mirror contradicts: size -> the verified one above it.
        self._contradicted: dict[int, Checkpoint] = {}

    # What is held ---------------------------------------------------------------

    def largest(self) -> Checkpoint | None:
        """The largest checkpoint of the log held (observed or cosigned)."""
        if not self.observed:
            return self.last_cosigned
        top = self.observed[max(self.observed)]
        if self.last_cosigned is not None and self.last_cosigned.size > top.size:
            return self.last_cosigned
        return top

    def bound(self) -> Checkpoint | None:
        """The checkpoint an offer must reach: the one shown in the last request, or, with
        no request, the largest held. A larger one seen after the request is required at
        the next round."""
        return self.asked if self.requested else self.largest()

    def request(self) -> None:
        """A request is going out showing ``largest()``: the bound of its answer."""
        self.asked = self.largest()
        self.requested = True

    @property
    def head(self) -> Checkpoint | None:
        """The checkpoint the mirror ends at (None while it is empty)."""
        return self.observed.get(self.mirror.size) if self.mirror.size else None

    def leaves(self, start: int, limit: int) -> list[bytes]:
        """Leaf hashes ``start`` .. ``start + limit`` of the mirror (fewer at its end)."""
        end = min(self.mirror.size, start + max(0, limit))
        return [self.mirror.leaf(i) for i in range(max(0, start), end)]

    # Rules ------------------------------------------------------------------------

    def observe(self, checkpoint: Checkpoint) -> bool:
        """Check a checkpoint of the log (already verified) against what is held.

        Returns whether it is new (to be stored). Raises ``Equivocation`` if
        it contradicts a checkpoint of its size or the mirror's prefix.
        """
        checkpoint = bare_checkpoint(checkpoint)
        size = checkpoint.size
        same = self.observed.get(size)
        if same is not None:
            if same.root != checkpoint.root:
                raise Equivocation(
                    f"{self.owner} signed two different logs of size {size}",
                    evidence=_evidence(same, checkpoint),
                )
            return False
        if size <= self.mirror.size and self.mirror.root_at(size) != checkpoint.root:
            anchor = self._verified_above(size)
            message = (
                f"{self.owner}'s checkpoint {size} is not a prefix of its log as witnessed "
                f"up to {self.mirror.size}: it signed two different logs"
            )
            if anchor is None:
                raise CheckpointRejected(message)
            raise Equivocation(message, evidence=_evidence(anchor, checkpoint))
        self.observed[size] = checkpoint
        return True

    def plan_offer(self, checkpoint: Checkpoint) -> OfferPlan:
        """Judge an offered checkpoint before any leaf is fetched for it.

        Smaller than the largest checkpoint observed: a rollback (or a
        fabricated larger checkpoint the log never had, which is as bad).
        """
        checkpoint = bare_checkpoint(checkpoint)
        largest = self.bound()
        if largest is not None and checkpoint.size < largest.size:
            raise CheckpointRollback(
                f"{self.owner} offered checkpoint {checkpoint.size}, smaller than its checkpoint "
                f"{largest.size} this terminal holds: its log was rolled back, or it signed a "
                "checkpoint of a log it does not have",
                evidence=_evidence(largest, checkpoint),
            )
        self.observe(checkpoint)  # a checkpoint of its size with another root: equivocation
        fresh = self.last_cosigned is None or (
            self.last_cosigned.size,
            self.last_cosigned.root,
        ) != (checkpoint.size, checkpoint.root)
        return OfferPlan(self.owner, self.observed[checkpoint.size], self.mirror.size, fresh)

    def extend(self, plan: OfferPlan, leaves: Sequence[bytes]) -> None:
        """Append the owner's leaves up to the offered size, if they hash to its root."""
        checkpoint = plan.checkpoint
        start = self.mirror.size
        if len(leaves) != checkpoint.size - plan.start or plan.start > start:
            raise CheckpointRejected(
                f"{self.owner} served {len(leaves)} leaf hashes for its checkpoint "
                f"{checkpoint.size}, which needs leaves {plan.start} to {checkpoint.size}"
            )
        if plan.start < start:
            # The mirror grew while the leaves were fetched (leaf hashes that came
            # with the owner's receipts): those it holds must be the ones served.
            held = self.leaves(plan.start, min(start, checkpoint.size) - plan.start)
            if list(leaves[: len(held)]) != held:
                raise CheckpointRejected(
                    f"{self.owner} served leaf hashes from {plan.start} that differ from "
                    "those it showed before: its log is not the one this terminal witnessed"
                )
            if checkpoint.size < start:
                raise StaleOffer(
                    f"{self.owner}'s checkpoint {checkpoint.size} is behind what its receipts "
                    f"showed since ({start} leaves): the next round asks again"
                )
            leaves = leaves[len(held) :]
        if any(len(leaf) != LEAF_SIZE for leaf in leaves):
            raise SchemaViolation(f"a leaf hash from {self.owner} is not {LEAF_SIZE} bytes")
        if self.mirror.root_with(leaves) != checkpoint.root:
            raise CheckpointRejected(
                f"the leaf hashes {self.owner} served ({start} to {checkpoint.size}) do not hash "
                f"to its checkpoint {checkpoint.size}: they are wrong, or its log is not an "
                f"extension of the one this terminal witnessed up to {start}"
            )
        for leaf in leaves:
            self.mirror.append(leaf)
        for size in sorted(s for s in self.observed if start < s <= checkpoint.size):
            self._check_covered(self.observed[size])

    def check_cosignable(self, plan: OfferPlan) -> None:
        """Rules 2 to 4: the mirror ends at the offer, and nothing observed contradicts it."""
        if self.mirror.size != plan.checkpoint.size or (self.mirror.root() != plan.checkpoint.root):
            raise CheckpointRejected(
                f"{self.owner}'s checkpoint {plan.checkpoint.size} is not verified against its "
                "leaf hashes"
            )
        largest = self.bound()
        if largest is not None and largest.size > plan.checkpoint.size:
            raise CheckpointRollback(
                f"{self.owner} offered checkpoint {plan.checkpoint.size}, smaller than its "
                f"checkpoint {largest.size} this terminal holds",
                evidence=_evidence(largest, plan.checkpoint),
            )
        if self._contradicted:
            size = min(self._contradicted)
            raise Equivocation(
                f"{self.owner}'s checkpoint {size} is not a prefix of its log as witnessed: "
                "it signed two different logs, and this terminal cosigns none of them",
                evidence=_evidence(self._contradicted[size], self.observed[size]),
            )

    def cosigned(self, checkpoint: Checkpoint) -> None:
        self.last_cosigned = bare_checkpoint(checkpoint)

    # Restoring from the store ---------------------------------------------------------

    def restore(
        self,
        observed: Iterable[Checkpoint],
        leaves: Iterable[bytes],
        last_cosigned: Checkpoint | None,
    ) -> None:
        """Take up stored state (checkpoints already verified under the owner's card).

        The mirror is kept only as far as it ends at an observed checkpoint
        with its root; stored checkpoints it contradicts are found again.
        """
        for checkpoint in observed:
            checkpoint = bare_checkpoint(checkpoint)
            self.observed.setdefault(checkpoint.size, checkpoint)
        if last_cosigned is not None:
            self.last_cosigned = bare_checkpoint(last_cosigned)
            self.observed.setdefault(self.last_cosigned.size, self.last_cosigned)
        mirror = MerkleLog()
        good = 0
        for leaf in leaves:
            if len(leaf) != LEAF_SIZE:
                break
            mirror.append(leaf)
            at = self.observed.get(mirror.size)
            if at is not None and at.root == mirror.root():
                good = mirror.size
        if good != mirror.size:  # a damaged or unfinished store: keep what a checkpoint covers
            trimmed = MerkleLog()
            for i in range(good):
                trimmed.append(mirror.leaf(i))
            mirror = trimmed
        self.mirror = mirror
        self.mirror_saved = mirror.size
        for size in sorted(s for s in self.observed if s <= mirror.size):
            self._check_covered(self.observed[size])

    # Internals ------------------------------------------------------------------------

    def _check_covered(self, checkpoint: Checkpoint) -> None:
        root = self.mirror.root_at(checkpoint.size) if checkpoint.size else EMPTY_ROOT
        if root == checkpoint.root:
            return
        anchor = self._verified_above(checkpoint.size)
        if anchor is not None:
            self._contradicted[checkpoint.size] = anchor

    def _verified_above(self, size: int) -> Checkpoint | None:
        """The smallest observed checkpoint above ``size`` that the mirror bears out."""
        for s in sorted(s for s in self.observed if size <= s <= self.mirror.size):
            if self.mirror.root_at(s) == self.observed[s].root:
                return self.observed[s]
        return None
