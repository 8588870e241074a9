"""What every part of a terminal's application layer shares.

A ``Kernel`` holds the terminal's identity, database engine, clock, lock and
protocol state (its ``Party``, rebuilt from the database by ``reload``). The
parts of the application layer (``messaging``, ``receiving``, ``receipts``,
``witness``, ``outbox``, ``channels``, ``links``, ``alarms``, ``deadlines``,
``peers``) each hold the one kernel of their terminal; ``Terminal`` composes
them.

Every operation that changes the protocol state writes the transcript entries
it produced, and the indexes over them, in one transaction (``commit``); if
that transaction fails the in-memory state is rebuilt from the database, so
memory is never ahead of the disk.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from sqlalchemy import Connection, Engine, and_, delete, insert, select

from parley.config import Config, DataDir
from parley.core.envelope import Limits
from parley.core.identity import Identity
from parley.core.party import Party
from parley.errors import VerificationError
from parley.forms import default_registry
from parley.service import tls
from parley.service.cardchain import load_chain, load_peer_chains
from parley.service.keystore import load_keyring
from parley.service.ledger import StoreLedger
from parley.service.reads import HUMAN_KINDS
from parley.service.resume import resume_state, witness_state
from parley.store import models as m
from parley.store.db import reading

__all__ = [
    "HUMAN_KINDS",
    "PRECEDENCE_RANK",
    "RESTORED",
    "SHOWN_KINDS",
    "URGENT",
    "Forward",
    "Kernel",
    "iso",
    "stored_frozen",
    "utc",
    "utc_now",
]

PRECEDENCE_RANK = {"FLASH": 0, "IMMEDIATE": 1, "PRIORITY": 2, "ROUTINE": 3}
SHOWN_KINDS = ("text", "form", "service")
URGENT = ("FLASH", "IMMEDIATE")


def utc_now() -> datetime:
    return datetime.now(UTC)


def utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes: every stored time is UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def iso(value: datetime | None) -> str | None:
    value = utc(value)
    return value.isoformat().replace("+00:00", "Z") if value else None


class Kernel:
    """One terminal's identity, database, clock, lock and protocol state."""

    def __init__(
        self,
        data: DataDir,
        config: Config,
        identity: Identity,
        engine: Engine,
        *,
        clock: Callable[[], datetime] = utc_now,
        store_key: bytes | None = None,
    ) -> None:
        self.data = data
        #: Seals the private halves of the medium-term encryption keys (``keystore``);
        #: None: the terminal was opened without the passphrase and makes no new keys.
        self.store_key = store_key
        self.config = config
        self.identity = identity
        self.engine = engine
        self.clock = clock
        self.me = identity.party
        self.limits = Limits(clock_skew=timedelta(seconds=config.max_clock_skew))
        self.lock = threading.RLock()
        #: The identity whose TLS certificate this process presents: the one it
        #: started with (a rotation changes it at the next start).
        self.tls_identity = identity
        self.tls_certificate = tls.certificate_for(identity)
        #: The key file's passphrase, when the terminal was opened with it (a key
        #: rotation writes the new key file).
        self.passphrase: str | None = None
        #: Called when a card chain changed (the read model reads the cards again).
        self.chains_changed: Callable[[], None] = lambda: None
        #: Called with a peer whose card was rotated (the server trusts its new TLS
        #: certificate and reconnects).
        self.on_card_rotated: Callable[[str], None] = lambda party: None
        self.forms = default_registry()
        self.party = Party(identity, clock=clock, limits=self.limits, forms=self.forms)
        self.peer_certificates: dict[str, bytes] = {}
        #: (channel, sender) -> highest contiguous sequence, for catch-up requests.
        self.gaps: dict[tuple[str, str], int] = {}
        #: When each gap was first seen (time.monotonic()).
        self.gap_seen: dict[tuple[str, str], float] = {}
        #: Messages received per sender since start (the worker witnesses logs that grew).
        self.activity: dict[str, int] = {}
        #: Called (outside the lock) whenever there is new work for the delivery worker.
        self.on_outbox: Callable[[], None] = lambda: None
        #: Bumped (after the commit) whenever rows may have become due in the outbox:
        #: the outbox's cached summary of what is pending is read again.
        self.outbox_generation = 0
        #: Peers to hand our latest cosignature of their log again at the next round,
        #: though it is not new: they asked for their recovery status (restarted,
        #: perhaps from a backup older than the cosignature), or a round with them failed.
        self.cosign_again: set[str] = set()
        #: Called with each alarm raised (the server runs the alarm command).
        self.on_alarm: Callable[[dict[str, Any]], None] = lambda alarm: None
        #: Peers that hold a checkpoint of this terminal's log beyond (or other than)
        #: its log: peer -> the size it holds (``note_rollback``).
        self.rollback: dict[str, int] = {}
        #: Work joined to this thread's next transaction (``joined``).
        self._joined = threading.local()
        self._stored_channels: set[str] = set()
        self.reload()

    def reload(self) -> None:
        """Rebuild the protocol state from the database.

        The transcript is resumed from the stored leaf hashes and must hash
        to the last checkpoint this terminal signed; the records of single
        messages stay in the database (``StoreLedger``) and are read when
        needed. ``parley verify`` re-checks every signature.
        """
        ledger = StoreLedger(self.engine, self.me, self.load_entry)
        party = Party(
            self.identity,
            clock=self.clock,
            limits=self.limits,
            ledger=ledger,
            entry_loader=self.load_entry,
            forms=self.forms,
        )
        certs: dict[str, bytes] = {}
        with reading(self.engine) as conn:
            for peer, (chain, pems) in load_peer_chains(conn).items():
                party.add_peer(chain, chain.fingerprint)
                party.set_peer_chain(chain)
                certs[peer] = pems
            party.adopt_chain(load_chain(conn, self.identity.card))
            self.identity = party.identity
            state = resume_state(conn, self.engine, self.me)
            party.keyring = load_keyring(conn, self.identity, party.peers, self.store_key)
            cosignatures = conn.execute(
                select(m.cosignatures).order_by(
                    m.cosignatures.c.size.desc(), m.cosignatures.c.id.desc()
                )
            ).all()
        # Outside the connection: the leaves are read in batches of their own.
        party.resume(state)
        witnessed: dict[str, str] = {}
        done: set[str] = set()
        for row in cosignatures:
            if row.party not in party.peers:
                continue
            if row.direction == "of-us":
                if row.party not in done:
                    done.add(row.party)
                    party.restore_cosignature(row.party, row.note)
            else:
                witnessed.setdefault(row.party, row.note)
        for peer in party.peers:
            observed, leaves = witness_state(self.engine, peer)
            party.restore_witness(peer, observed, leaves, witnessed.get(peer))
        party.frozen = stored_frozen(self.engine)
        self.party = party
        self.ledger = ledger
        self.peer_certificates = certs
        self._stored_channels = set()
        self._logged_through = party.transcript.size

    def note_rollback(self, peer: str, seen_size: int) -> str:
        """``peer`` holds checkpoint ``seen_size`` of this log, which the log does not bear out.

        The terminal freezes (docs/recovery.md): it signs nothing new until its
        log is recovered. Returns the reason, in words, naming every such peer.
        """
        self.rollback[peer] = max(seen_size, self.rollback.get(peer, 0))
        size = self.party.transcript.size
        seen = ", ".join(f"{p} saw checkpoint {s}" for p, s in sorted(self.rollback.items()))
        reason = (
            f"this terminal's log holds {size} entries but {seen}: its log was rolled back "
            "(restored from an old copy, or entries lost). It signs nothing new until "
            "parley recover rebuilds the missing entries from its peers."
        )
        if self.frozen != reason:
            self.freeze(reason)
        return reason

    def store_witness_changes(self, conn: Connection) -> None:
        """Store the checkpoints of peers' logs first seen, and the new mirror leaves.

        Called in the transaction of what they came with (a receipt, an
        offer, a cosignature): a checkpoint is on disk before it is relied on.
        """
        observations, leaves = self.party.take_witness_changes()
        now = self.clock()
        for seen in observations:
            held = conn.execute(
                select(m.observed_checkpoints.c.size).where(
                    and_(
                        m.observed_checkpoints.c.party == seen.owner,
                        m.observed_checkpoints.c.size == seen.checkpoint.size,
                    )
                )
            ).first()
            if held is None:
                conn.execute(
                    insert(m.observed_checkpoints).values(
                        party=seen.owner,
                        size=seen.checkpoint.size,
                        root=seen.checkpoint.root,
                        note=seen.checkpoint.note,
                        source=seen.source,
                        seen_at=now,
                        verified=False,
                    )
                )
        for owner, (start, hashes) in leaves.items():
            if hashes:
                conn.execute(
                    delete(m.witnessed_leaves).where(
                        and_(m.witnessed_leaves.c.party == owner, m.witnessed_leaves.c.idx >= start)
                    )
                )
                conn.execute(
                    insert(m.witnessed_leaves),
                    [
                        {"party": owner, "idx": start + i, "leaf": leaf}
                        for i, leaf in enumerate(hashes)
                    ],
                )

    # Frozen: a log behind what its peers saw signs nothing new --------------------

    @property
    def frozen(self) -> str | None:
        """Why this terminal signs nothing new (docs/recovery.md), or None."""
        return self.party.frozen

    def freeze(self, reason: str) -> None:
        """Sign nothing new until recovered; kept across restarts."""
        with self.lock, self.engine.begin() as conn:
            conn.execute(delete(m.settings).where(m.settings.c.key == "frozen"))
            conn.execute(insert(m.settings).values(key="frozen", value=reason))
            self.party.frozen = reason

    def thaw(self) -> None:
        """The log is complete again: sign as before."""
        self.rollback.clear()
        with self.lock, self.engine.begin() as conn:
            conn.execute(
                delete(m.settings).where(m.settings.c.key.in_(("frozen", "recovery_required")))
            )
            self.party.frozen = None
        self.outbox_changed()  # what waited in the outbox goes now

    def outbox_changed(self) -> None:
        """There is new work in the outbox (committed): forget its summary, wake the worker."""
        self.outbox_generation += 1
        self.on_outbox()

    def load_entry(self, index: int) -> bytes:
        with reading(self.engine) as conn:
            entry = conn.execute(
                select(m.log_entries.c.entry).where(m.log_entries.c.idx == index)
            ).scalar()
        if entry is None:
            raise VerificationError(f"log entry {index} is missing from the store")
        return bytes(entry)

    @contextmanager
    def joined(self, work: Callable[[Connection], None]) -> Iterator[Callable[[], bool]]:
        """Run ``work`` in the next transaction this thread commits, after its own writes.

        The operations layer writes the action log (and a held FLASH's
        state) this way, in the same transaction as the action it records:
        both are on disk, or neither. Yields a function saying whether
        ``work`` ran.
        """
        ran = [False]

        def once(conn: Connection) -> None:
            work(conn)
            ran[0] = True

        pending = self._pending()
        pending.append(once)
        try:
            yield lambda: ran[0]
        finally:
            if once in pending:
                pending.remove(once)

    def _pending(self) -> list[Callable[[Connection], None]]:
        pending: list[Callable[[Connection], None]] | None = getattr(self._joined, "work", None)
        if pending is None:
            pending = self._joined.work = []
        return pending

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction, with the work joined to it (``joined``) done last."""
        with self.engine.begin() as conn:
            yield conn
            pending = self._pending()
            while pending:
                pending.pop(0)(conn)

    def commit(self, work: Callable[[Connection], Any]) -> Any:
        """Run ``work`` in one transaction; on failure rebuild memory from the disk."""
        try:
            with self.transaction() as conn:
                result = work(conn)
        except BaseException:
            self.reload()
            raise
        self.ledger.committed()
        if self._logged_through == self.party.transcript.size:
            self.party.transcript.evict()  # the store holds every entry now
        return result

    def log_new_entries(self, conn: Connection, start: int) -> None:
        """Write the transcript entries from ``start`` on, and the latest checkpoint."""
        transcript = self.party.transcript
        tree = transcript.tree
        now = self.clock()
        rows = [
            {"idx": i, "entry": transcript.entry(i), "stored_at": now, "leaf": tree.leaf(i)}
            for i in range(start, transcript.size)
        ]
        if rows:
            conn.execute(insert(m.log_entries), rows)
        self._logged_through = transcript.size
        self.store_witness_changes(conn)
        latest = self.party.latest_checkpoint
        if latest is not None and latest.size > 0:
            exists = conn.execute(
                select(m.checkpoints.c.size).where(m.checkpoints.c.size == latest.size)
            ).first()
            if exists is None:
                conn.execute(
                    insert(m.checkpoints).values(size=latest.size, note=latest.note, issued_at=now)
                )

    def ensure_channel(
        self, conn: Connection, name: str, members: Iterable[str], now: datetime
    ) -> None:
        """Store a channel the first time a message on it is sent or received."""
        # Channels known to be stored are remembered: a failed commit reloads the set.
        if name in self._stored_channels:
            return
        if conn.execute(select(m.channels.c.name).where(m.channels.c.name == name)).first():
            self._stored_channels.add(name)
            return
        self._stored_channels.add(name)
        members = sorted(set(members))
        conn.execute(
            insert(m.channels).values(
                name=name,
                members=",".join(members),
                kind="bilateral" if len(members) == 2 and name == ".".join(members) else "named",
                proposed_by=None,
                created_at=now,
            )
        )


T = TypeVar("T")


class Forward(Generic[T]):
    """An attribute of a façade that is the same attribute of its kernel.

    The kernel replaces some of them (``party`` on every reload) and front
    ends set others (``on_outbox``): reading and writing through the façade
    always reach the kernel's current value.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> Forward[T]: ...

    @overload
    def __get__(self, obj: object, owner: type) -> T: ...

    def __get__(self, obj: object | None, owner: type) -> T | Forward[T]:
        if obj is None:
            return self
        value: T = getattr(obj.kernel, self.name)  # type: ignore[attr-defined]
        return value

    def __set__(self, obj: object, value: T) -> None:
        setattr(obj.kernel, self.name, value)  # type: ignore[attr-defined]


P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")


class Delegated(Generic[S, P, R]):
    """A method of a façade that is the same method of one of its parts.

    ``send = Delegated("_messaging", Messaging.send)`` makes ``terminal.send(...)``
    call ``terminal._messaging.send(...)`` with the part's signature, its
    docstring and its types.
    """

    def __init__(self, part: str, method: Callable[Concatenate[S, P], R]) -> None:
        self.part = part
        self.method = method
        self.__doc__ = method.__doc__

    @overload
    def __get__(self, obj: None, owner: type) -> Delegated[S, P, R]: ...

    @overload
    def __get__(self, obj: object, owner: type) -> Callable[P, R]: ...

    def __get__(self, obj: object | None, owner: type) -> Callable[P, R] | Delegated[S, P, R]:
        if obj is None:
            return self
        bound: Callable[P, R] = getattr(getattr(obj, self.part), self.method.__name__)
        return bound


#: Why a terminal restored from a backup waits (settings row ``recovery_required``).
RESTORED = (
    "this terminal was restored from a backup: it signs nothing until its peers have "
    "confirmed its log is complete (parley recover rebuilds what is missing)"
)


def stored_frozen(engine: Engine) -> str | None:
    """Why the stored terminal signs nothing new (docs/recovery.md), or None."""
    with reading(engine) as conn:
        rows = dict(
            conn.execute(
                select(m.settings.c.key, m.settings.c.value).where(
                    m.settings.c.key.in_(("frozen", "recovery_required"))
                )
            ).all()
        )
    if rows.get("frozen"):
        return str(rows["frozen"])
    if rows.get("recovery_required"):
        return RESTORED
    return None
