"""Every error Parley raises, arranged by who broke which rule.

The split follows h11: a ``LocalError`` is a mistake on our side (a bug, a bad
argument from our own operator or code); a ``RemoteError`` is the other
party's bad input. A terminal must never crash on a ``RemoteError`` and must
never store the input that caused it as if it were valid.

Hierarchy::

    ParleyError
    ├── LocalError                    our side broke a rule
    │   ├── UsageError                  a bad argument from our own caller
    │   │   ├── AlreadyAcknowledged       another operator acknowledged the message first
    │   │   ├── NothingToAcknowledge      a message no human acknowledges (a service message)
    │   │   ├── ChannelNotAgreed          a channel some of whose members have not agreed yet
    │   │   └── AlreadyDecided            a held FLASH already released or withdrawn
    │   ├── NotPermitted                the operator's role does not allow the action
    │   ├── UnknownPeer                 no pinned card for that party
    │   ├── FingerprintMismatch         the card does not match the fingerprint read aloud
    │   ├── UnacceptableCard            a sound card this terminal's card policy refuses
    │   ├── UnreadableFile              a file our own operator named cannot be read or parsed
    │   ├── RolledBack                  this terminal's log is behind what its peers saw: it
    │   │                               signs nothing new until it is recovered
    │   └── KeyFileError                the private key file cannot be used
    │       ├── WrongPassphrase
    │       └── DamagedKeyFile
    ├── RemoteError                   the other party's input broke a rule
    │   ├── MalformedInput              not the bytes the protocol requires
    │   │   ├── InvalidJSON
    │   │   ├── DuplicateKey
    │   │   ├── FloatNotAllowed
    │   │   ├── IntegerOutOfRange
    │   │   ├── NonCanonicalJSON
    │   │   ├── BodyTooLarge
    │   │   └── SchemaViolation           a field is missing, extra or of the wrong type
    │   ├── UnknownVersion
    │   ├── UnknownKind
    │   ├── MissingSignature
    │   ├── InvalidSignature
    │   │   └── SupersededKey             signed by a key after it was rotated out or revoked
    │   ├── UnknownSender
    │   ├── NotARecipient
    │   ├── DecryptionFailed
    │   │   └── KeyDestroyed              encrypted to a key this terminal has destroyed
    │   ├── StaleKeyAnnouncement        an encryption key older than the current one
    │   ├── TimestampInFuture
    │   ├── ReplayedEnvelope            an envelope id or sequence number seen before
    │   ├── InvalidReceipt              a receipt that proves nothing we sent
    │   ├── InvalidCard                 an identity card that does not hold together
    │   │   ├── InvalidRotation           a new card that does not chain to the pinned one
    │   │   └── InvalidRevocation         a revocation no key of the chain may sign
    │   ├── QuotaExceeded               a peer sent more than its rate or storage quota
    │   └── CheckpointRejected
    │       ├── CheckpointRollback        smaller than one already cosigned
    │       └── Equivocation              two different histories for the same log
    └── VerificationError             a proof, signature or record does not verify
        ├── InclusionProofError
        └── ConsistencyProofError

``VerificationError`` stands apart because auditors use it on records that
may be our own: a failed proof says the record is wrong, not who wrote it.

What an operator reads (``diagnostics``) says who broke the rule and the rule,
never a class name; the class name lives on as a machine code (``code``) in
``error_body``, the JSON form the operator API answers and ``--json`` prints.
An error an operator meets in the console also carries ``params``, the values a
front end words it with in the operator's own language (by its ``code``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

__all__ = [
    "AlreadyAcknowledged",
    "AlreadyDecided",
    "BodyTooLarge",
    "ChannelNotAgreed",
    "CheckpointRejected",
    "CheckpointRollback",
    "ConsistencyProofError",
    "DamagedKeyFile",
    "DecryptionFailed",
    "DuplicateKey",
    "Equivocation",
    "FingerprintMismatch",
    "FloatNotAllowed",
    "InclusionProofError",
    "IntegerOutOfRange",
    "InvalidCard",
    "InvalidJSON",
    "InvalidReceipt",
    "InvalidRevocation",
    "InvalidRotation",
    "InvalidSignature",
    "KeyDestroyed",
    "KeyFileError",
    "LocalError",
    "MalformedInput",
    "MissingSignature",
    "NonCanonicalJSON",
    "NotARecipient",
    "NotPermitted",
    "NothingToAcknowledge",
    "ParleyError",
    "QuotaExceeded",
    "RemoteError",
    "ReplayedEnvelope",
    "RolledBack",
    "SchemaViolation",
    "StaleKeyAnnouncement",
    "StaleOffer",
    "SupersededKey",
    "TimestampInFuture",
    "UnacceptableCard",
    "UnknownKind",
    "UnknownPeer",
    "UnknownSender",
    "UnknownVersion",
    "UnreadableFile",
    "UsageError",
    "VerificationError",
    "WrongPassphrase",
    "diagnostic_line",
    "error_body",
]

#: How an operator is told who broke the rule, before the rule itself.
CULPRIT_PREFIX = {
    "us": "",
    "peer": "rejected input from the other party: ",
    "record": "verification failed: ",
}


class ParleyError(Exception):
    """Base of every Parley error. ``str(err)`` is a sentence for a person."""

    #: Who broke the rule, for operators: "us", "peer" or "record".
    culprit = "us"
    #: The values a front end words this error with in an operator's language (by ``code``).
    params: Mapping[str, str] = MappingProxyType({})

    @property
    def code(self) -> str:
        """A machine-readable code: the class name in snake case (``invalid_signature``)."""
        name = type(self).__name__
        return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()

    def diagnostics(self) -> str:
        """One line for an operator: who broke the rule (unless it is our side), and the rule."""
        return diagnostic_line(error_body(self))


def error_body(exc: ParleyError) -> dict[str, Any]:
    """An error as data: the operator API's error answer, and what ``--json`` prints.

    ``usage`` is true for a bad argument from our own caller (the CLI exits 2).
    """
    return {
        "error": exc.code,
        "culprit": exc.culprit,
        "usage": isinstance(exc, UsageError),
        "message": str(exc),
        **({"params": dict(exc.params)} if exc.params else {}),
    }


def diagnostic_line(body: dict[str, Any]) -> str:
    """The one line an operator reads for an ``error_body`` (from here or from the API)."""
    prefix = CULPRIT_PREFIX.get(str(body.get("culprit")), "")
    return prefix + str(body.get("message") or body.get("error") or "unknown error")


class LocalError(ParleyError):
    culprit = "us"


class UsageError(LocalError):
    """``params``: the values a front end words the refusal with (see ``ParleyError.params``)."""

    def __init__(self, message: str, **params: str) -> None:
        super().__init__(message)
        if params:
            self.params = MappingProxyType(dict(params))


class AlreadyAcknowledged(UsageError):
    """``operator``: who acknowledged the message first."""


class NothingToAcknowledge(UsageError):
    """A message of a kind no human acknowledges (``kind``)."""


class ChannelNotAgreed(UsageError):
    """``channel``, and the members it is ``waiting`` for."""


class AlreadyDecided(UsageError):
    """A held FLASH (``held``) another officer released or withdrew (``state``)."""


class NotPermitted(LocalError):
    """The operator's role does not allow the action (``parley.service.policy``).

    ``decision`` is the policy's ``Decision``: the role and the rule that refused.
    """

    def __init__(self, message: str, *, decision: object = None) -> None:
        super().__init__(message)
        self.decision = decision


class UnknownPeer(LocalError):
    pass


class FingerprintMismatch(LocalError):
    pass


class UnacceptableCard(LocalError):
    """A card that holds together but that this terminal's policy refuses.

    Its validity is longer than the terminal accepts, begins beyond the allowed
    clock skew in the future, or is over. Like a card file that cannot be read,
    it was handed over by hand: the operator is the one who asks for another.
    """


class UnreadableFile(LocalError):
    """A file our own operator named (a card, form data, a list) cannot be read or parsed.

    Even a card file that came from a peer: it was handed over by hand, and the
    operator is the one who can go and fetch it again.
    """


class RolledBack(LocalError):
    """This terminal's log is behind what its peers have seen (restored from an old copy,
    or entries lost): it signs nothing new until ``parley recover`` rebuilds it."""


class KeyFileError(LocalError):
    pass


class WrongPassphrase(KeyFileError):
    pass


class DamagedKeyFile(KeyFileError):
    pass


class RemoteError(ParleyError):
    culprit = "peer"


class MalformedInput(RemoteError):
    pass


class InvalidJSON(MalformedInput):
    pass


class DuplicateKey(MalformedInput):
    pass


class FloatNotAllowed(MalformedInput):
    pass


class IntegerOutOfRange(MalformedInput):
    pass


class NonCanonicalJSON(MalformedInput):
    pass


class BodyTooLarge(MalformedInput):
    pass


class SchemaViolation(MalformedInput):
    pass


class UnknownVersion(RemoteError):
    pass


class UnknownKind(RemoteError):
    pass


class MissingSignature(RemoteError):
    pass


class InvalidSignature(RemoteError):
    pass


class SupersededKey(InvalidSignature):
    """A signature dated after its key was rotated out or revoked: an old key never
    signs again, and a stolen one is refused."""

    #: The card whose keys signed: "<party> v<version>" (one alarm per card).
    card: str = ""
    #: Whether the card was revoked (not only rotated out).
    revoked: bool = False


class UnknownSender(RemoteError):
    pass


class NotARecipient(RemoteError):
    pass


class DecryptionFailed(RemoteError):
    pass


class KeyDestroyed(DecryptionFailed):
    """The ciphertext is for a medium-term key whose private half was destroyed."""


class StaleKeyAnnouncement(RemoteError):
    pass


class TimestampInFuture(RemoteError):
    pass


class ReplayedEnvelope(RemoteError):
    pass


class InvalidReceipt(RemoteError):
    pass


class InvalidCard(RemoteError):
    pass


class InvalidRotation(InvalidCard):
    """A rotation card that does not chain to the card pinned (or replays an older one)."""


class InvalidRevocation(InvalidCard):
    """A revocation that is forged, names no card of the chain, or is signed by a key
    that may not revoke that card."""


class QuotaExceeded(RemoteError):
    """A peer sent more than its quota (``parley.service.quotas``): refused, not stored.

    ``retry_after`` is the seconds until the same request would fit; ``new_incident``
    is true for the first refusal of an incident (recorded as one security event).
    """

    def __init__(self, message: str, *, retry_after: float, new_incident: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.new_incident = new_incident


class CheckpointRejected(RemoteError):
    pass


class Equivocation(CheckpointRejected):
    """Two checkpoints of one log that cannot both be true.

    ``evidence`` holds both signed notes (and the failed proof if any) so
    they can be kept and shown to a third party.
    """

    def __init__(self, message: str, *, evidence: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.evidence: dict[str, str] = dict(evidence or {})


class CheckpointRollback(Equivocation):
    """A log offered smaller than a checkpoint of it already cosigned: both notes are evidence."""


class StaleOffer(LocalError):
    """A peer's offered checkpoint fell behind its log as this terminal mirrors it
    (its receipts showed more leaves while the offer's were fetched): nobody broke
    a rule; the next witness round asks again."""


class VerificationError(ParleyError):
    culprit = "record"


class InclusionProofError(VerificationError):
    pass


class ConsistencyProofError(VerificationError):
    pass
