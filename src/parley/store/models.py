"""The terminal's tables (SQLAlchemy 2 Core).

The transcript (``log_entries``) is the record: every other table is an
index over it or local bookkeeping (outbox, links, alarms). ``parley verify``
checks the record itself, so a changed byte anywhere in it is caught even if
the indexes were changed to match.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

metadata = MetaData()

# Time columns are timezone-aware UTC everywhere.
Time = DateTime(timezone=True)

settings = Table(
    "settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

peers = Table(
    "peers",
    metadata,
    Column("party", String(63), primary_key=True),
    Column("card", LargeBinary, nullable=False),
    Column("fingerprint", String(71), nullable=False),
    Column("tls_certificate", LargeBinary, nullable=False),
    Column("added_at", Time, nullable=False),
)

#: Every card of each party since it was pinned (parley.service.cardchain).
card_chain = Table(
    "card_chain",
    metadata,
    Column("party", String(63), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("key_id", String(64), nullable=False, unique=True),
    Column("card", LargeBinary, nullable=False),
    Column("fingerprint", String(71), nullable=False),
    Column("via", String(16), nullable=False),  # "pin" (fingerprint read aloud) or "rotation"
    Column("tls_certificate", LargeBinary),
    Column("added_at", Time, nullable=False),
)

revocations = Table(
    "revocations",
    metadata,
    Column("key_id", String(64), primary_key=True),
    Column("party", String(63), nullable=False),
    Column("statement", LargeBinary, nullable=False),
    Column("compromised_at", Time, nullable=False),
    Column("received_at", Time, nullable=False),
)

links = Table(
    "links",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("peer", String(63), ForeignKey("peers.party"), nullable=False),
    Column("name", String(63), nullable=False),
    Column("url", Text, nullable=False),
    Column("state", String(16), nullable=False, default="unknown"),
    Column("rtt_ms", Float),
    Column("last_success", Time),
    Column("last_test", Time),
    Column("last_error", Text),
    Column("failures", Integer, nullable=False, default=0),
    UniqueConstraint("peer", "name"),
)

log_entries = Table(
    "log_entries",
    metadata,
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("entry", LargeBinary, nullable=False),
    Column("stored_at", Time, nullable=False),
    Column("leaf", LargeBinary),  # merkle.leaf_hash(entry); NULL in rows from before 0003
)

messages = Table(
    "messages",
    metadata,
    Column("envelope_id", String(36), primary_key=True),
    Column("log_index", BigInteger, nullable=False, unique=True),
    Column("direction", String(3), nullable=False),  # "in" or "out"
    Column("channel", String(63), nullable=False),
    Column("sender", String(63), nullable=False),
    Column("recipients", Text, nullable=False),  # comma-separated party ids
    Column("seq", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("precedence", String(16), nullable=False),
    Column("exercise", Boolean, nullable=False),
    Column("created_at", Time, nullable=False),
    Column("stored_at", Time, nullable=False),
    Column("operator", Text, nullable=False),
    Column("lang", String(35), nullable=False),  # a BCP 47 tag, as long as the core allows
    Column("body", Text, nullable=False),  # canonical JSON of the decrypted content body
    # The decrypted inner content (canonical JSON with its salt) exactly as the
    # envelope's content_digest commits to it; NULL only before the terminal
    # filled it in after migration 0007. Readers check it, never trust it.
    Column("content", LargeBinary),
    Column("ack_due", Time),
    Column("acked_at", Time),
    Column("acked_by", Text),
    # Sender: the overdue-acknowledgement alarm was raised; receiver: the reminder was.
    Column("overdue", Boolean, nullable=False, default=False),
    # Set when this terminal refused the content (an incoming form it does not
    # know or finds invalid); the envelope is kept, never shown as valid.
    Column("rejection_code", String(64)),
    Column("rejection_reason", Text),
    UniqueConstraint("channel", "sender", "seq"),
)
Index("messages_by_direction", messages.c.direction, messages.c.stored_at)

receipts = Table(
    "receipts",
    metadata,
    Column("envelope_id", String(36), nullable=False),
    Column("receiver", String(63), nullable=False),
    Column("issued_at", Time, nullable=False),
    Column("stored_at", Time, nullable=False),
    Column("through_seq", BigInteger, nullable=False),
    Column("log_index", BigInteger),
    # A negative receipt: the receiver refused the content, and why.
    Column("rejection_code", String(64)),
    Column("rejection_reason", Text),
    PrimaryKeyConstraint("envelope_id", "receiver"),
)

translations = Table(
    "translations",
    metadata,
    # A certified translation of a message: DSSE signed by this terminal for
    # the operator who made it (parley.core.translation).
    Column("digest", String(64), primary_key=True),
    Column("envelope_id", String(36), nullable=False, index=True),
    Column("target_lang", String(35), nullable=False),
    Column("operator", Text, nullable=False),
    Column("statement", LargeBinary, nullable=False),
    Column("created_at", Time, nullable=False),
)

translation_countersignatures = Table(
    "translation_countersignatures",
    metadata,
    Column("translation", String(64), ForeignKey("translations.digest"), nullable=False),
    Column("operator", Text, nullable=False),
    Column("statement", LargeBinary, nullable=False),
    Column("created_at", Time, nullable=False),
    PrimaryKeyConstraint("translation", "operator"),
)

acks = Table(
    "acks",
    metadata,
    Column("envelope_id", String(36), nullable=False),
    Column("party", String(63), nullable=False),
    Column("operator", Text, nullable=False),
    Column("ack_envelope_id", String(36), nullable=False),
    Column("at", Time, nullable=False),
    PrimaryKeyConstraint("envelope_id", "party"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("envelope_id", String(36), nullable=False),
    Column("peer", String(63), nullable=False),
    Column("precedence", String(16), nullable=False),
    Column("state", String(16), nullable=False),  # pending, delivered
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt", Time, nullable=False),
    Column("last_error", Text),
    Column("delivered_at", Time),
    Column("link", String(63)),  # the link that delivered it
    Column("via", String(63)),  # only this link (link tests), or any
    PrimaryKeyConstraint("envelope_id", "peer"),
)
Index("outbox_pending", outbox.c.state, outbox.c.peer)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("note", Text, nullable=False),
    Column("issued_at", Time, nullable=False),
)

cosignatures = Table(
    "cosignatures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # direction "of-us": a peer cosigned our checkpoint; "by-us": we cosigned a peer's.
    Column("direction", String(8), nullable=False),
    Column("party", String(63), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("note", Text, nullable=False),
    Column("at", Time, nullable=False),
)
Index("cosignatures_latest", cosignatures.c.direction, cosignatures.c.party, cosignatures.c.size)

channels = Table(
    "channels",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("members", Text, nullable=False),
    Column("kind", String(16), nullable=False),  # bilateral, named
    Column("proposed_by", String(63)),
    Column("created_at", Time, nullable=False),
)

channel_agreements = Table(
    "channel_agreements",
    metadata,
    Column("channel", String(63), nullable=False),
    Column("party", String(63), nullable=False),
    Column("at", Time, nullable=False),
    PrimaryKeyConstraint("channel", "party"),
)

alarms = Table(
    "alarms",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Time, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("subject", Text, nullable=False),
    Column("message", Text, nullable=False),
    Column("cleared_at", Time),
    # Repeated evidence of one incident updates one alarm: how often, and when last.
    Column("count", Integer, nullable=False, default=1, server_default="1"),
    Column("last_at", Time),
)

security_events = Table(
    "security_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Time, nullable=False),
    Column("endpoint", Text, nullable=False),
    Column("remote", Text, nullable=False),
    Column("tls_party", String(63)),
    Column("code", String(64), nullable=False),
    Column("message", Text, nullable=False),
)

evidence = Table(
    "evidence",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Time, nullable=False),
    Column("party", String(63), nullable=False),
    Column("message", Text, nullable=False),
    Column("evidence", Text, nullable=False),  # canonical JSON
    # SHA-256 (hex) of the two checkpoint notes: each pair is kept once.
    Column("pair", String(64)),
    UniqueConstraint("party", "pair", name="evidence_once_per_pair"),
)

observed_checkpoints = Table(
    "observed_checkpoints",
    metadata,
    # Every checkpoint of a peer's log seen in a receipt, offer or request,
    # stored before it is relied on; verified once checked against its leaves.
    Column("party", String(63), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("root", LargeBinary, nullable=False),
    Column("note", Text, nullable=False),
    Column("source", String(16), nullable=False),  # receipt, offer, request, cosigned
    Column("seen_at", Time, nullable=False),
    Column("verified", Boolean, nullable=False, default=False, server_default=false()),
    PrimaryKeyConstraint("party", "size"),
)

witnessed_leaves = Table(
    "witnessed_leaves",
    metadata,
    # The leaf hashes of each peer's log, as shown to this terminal when it witnessed.
    Column("party", String(63), nullable=False),
    Column("idx", BigInteger, nullable=False),
    Column("leaf", LargeBinary, nullable=False),
    PrimaryKeyConstraint("party", "idx"),
)

issued_receipts = Table(
    "issued_receipts",
    metadata,
    # Receipts this terminal signed for envelopes it received, kept for the
    # sender's recovery (its log holds one of them).
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("envelope_id", String(36), nullable=False),
    Column("sender", String(63), nullable=False),
    Column("receipt", LargeBinary, nullable=False),
    Column("issued_at", Time, nullable=False),
)
Index("issued_receipts_by_sender", issued_receipts.c.sender, issued_receipts.c.envelope_id)

users = Table(
    "users",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("role", String(16), nullable=False),  # duty_officer, supervisor, auditor, admin
    Column("password_hash", Text, nullable=False),  # Argon2id
    Column("created_at", Time, nullable=False),
    Column("failed_logins", Integer, nullable=False, default=0),
    Column("locked_until", Time),
    Column("lang", String(8), nullable=False, default="en"),  # the console's language
)

operator_actions = Table(
    "operator_actions",
    metadata,
    # Every operator action, from every front end, with the operator who took it.
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Time, nullable=False),
    Column("operator", String(64), nullable=False),
    Column("action", String(32), nullable=False),
    Column("subject", Text, nullable=False),
    Column("detail", Text),
    # The role acted in (``local_admin``: the console token) and the front end.
    Column("role", String(16)),
    Column("via", String(8)),  # console, api, cli
)
Index("operator_actions_by_time", operator_actions.c.at)

handovers = Table(
    "handovers",
    metadata,
    # A shift handover: signed off by the outgoing officer, accepted by the incoming one.
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("signed_off_by", String(64), nullable=False),
    Column("signed_off_at", Time, nullable=False),
    Column("open_items", Text, nullable=False),  # JSON: what was open at sign-off
    Column("note", Text, nullable=False),
    Column("accepted_by", String(64)),
    Column("accepted_at", Time),
)

held_messages = Table(
    "held_messages",
    metadata,
    # A FLASH composed by a duty officer waits here for a supervisor to release it.
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", Time, nullable=False),
    Column("operator", String(64), nullable=False),
    Column("request", Text, nullable=False),  # JSON: the send request
    Column("state", String(16), nullable=False),  # held, released, cancelled
    Column("decided_by", String(64)),
    Column("decided_at", Time),
    Column("envelope_id", String(36)),
)

link_samples = Table(
    "link_samples",
    metadata,
    # Round-trip times over time, for the links page's chart.
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("peer", String(63), nullable=False),
    Column("link", String(63), nullable=False),
    Column("at", Time, nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("rtt_ms", Float),
)
Index("link_samples_by_link", link_samples.c.peer, link_samples.c.link, link_samples.c.at)

encryption_keys = Table(
    "encryption_keys",
    metadata,
    # This terminal's medium-term encryption keys (parley.core.enckeys). ``sealed``
    # holds the private half, encrypted under a key derived from the key passphrase;
    # it is overwritten (NULL, with SQLite's secure_delete) when the key is destroyed.
    Column("key_id", String(64), primary_key=True),
    Column("serial", Integer, nullable=False, unique=True),
    Column("announcement", LargeBinary, nullable=False),  # signed, canonical JSON
    Column("created_at", Time, nullable=False),
    Column("retired_at", Time),  # when the next key replaced it: from then on, grace
    Column("destroy_after", Time),  # retired_at + the grace period then configured
    Column("destroyed_at", Time),
    Column("sealed", LargeBinary),
)

peer_encryption_keys = Table(
    "peer_encryption_keys",
    metadata,
    # Every encryption key a peer announced and this terminal took as current.
    Column("party", String(63), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("serial", Integer, nullable=False),
    Column("announcement", LargeBinary, nullable=False),  # signed, canonical JSON
    Column("envelope_id", String(36), nullable=False),  # the service message it came in
    Column("received_at", Time, nullable=False),
    PrimaryKeyConstraint("party", "key_id"),
)

encryption_key_sent = Table(
    "encryption_key_sent",
    metadata,
    # Which of this terminal's keys was announced to which peer, in which message.
    Column("party", String(63), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("envelope_id", String(36), nullable=False),
    Column("at", Time, nullable=False),
    PrimaryKeyConstraint("party", "key_id"),
)
