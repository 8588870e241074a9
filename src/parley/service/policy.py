"""Who may do what on a terminal: one table of role x action, for every front end.

The console, the operator API and the CLI ask this module (through
``parley.service.operations``) before every action; none of them keeps a
rule of its own. ``decide`` is pure: the same actor, action and context give
the same ``Decision`` every time.

Roles are the operator accounts' (``parley.service.users.ROLES``) and the
**local administrator**: whoever holds the console token in the data
directory (``DIR/console.token``). The local administrator may do
everything: it is equal to root on the terminal's host, and is meant for
setting the terminal up and for emergencies, not for the watch.

What each role is for:

* ``duty_officer``: reads, sends ROUTINE, PRIORITY and IMMEDIATE messages,
  acknowledges, certifies and countersigns translations, hands over the
  watch. A duty officer's FLASH is *held* for a supervisor, not refused.
* ``supervisor``: everything a duty officer does, sends FLASH, releases or
  rejects held FLASH messages, creates and agrees channels, clears alarms,
  tests links and exports evidence.
* ``auditor``: reads, verifies and exports evidence; never changes anything.
* ``admin``: operator accounts, peers and their links, link tests, backups and
  verification; does not send.

One more role is not an operator's: ``scraper``, the holder of a scrape token
(``parley metrics token``), made for Prometheus. It may read the terminal's
metrics (``read_metrics``) and nothing else; no operator account may read
them (only the scrape token and the console token are accepted at ``/metrics``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from parley.errors import NotPermitted

__all__ = [
    "ACTIONS",
    "LOCAL_ADMIN",
    "ROLES",
    "RULES",
    "SCRAPER",
    "Actor",
    "Decision",
    "decide",
    "require",
]

LOCAL_ADMIN = "local_admin"
"""The role of whoever holds the console token: equal to root on the terminal's host."""

SCRAPER = "scraper"
"""The role of whoever holds a scrape token: reads the metrics, nothing else."""

ROLES = ("duty_officer", "supervisor", "auditor", "admin", LOCAL_ADMIN, SCRAPER)

Outcome = Literal["allowed", "held", "refused"]

#: The word for each role in what an operator reads.
ROLE_WORDS: Mapping[str, str] = {
    "duty_officer": "a duty officer",
    "supervisor": "a supervisor",
    "auditor": "an auditor",
    "admin": "an administrator",
    LOCAL_ADMIN: "the local administrator",
    SCRAPER: "a scrape token",
}

_WATCH = frozenset({"duty_officer", "supervisor"})
_EVERY_ACCOUNT = frozenset({"duty_officer", "supervisor", "auditor", "admin"})

#: action -> (the roles that may take it, what the rule says). The local
#: administrator may take every action and is not listed.
RULES: Mapping[str, tuple[frozenset[str], str]] = {
    "read": (_EVERY_ACCOUNT, "every operator may read"),
    "send": (_WATCH, "duty officers and supervisors send messages"),
    "send_flash": (
        frozenset({"supervisor"}),
        "a FLASH is sent by a supervisor; a duty officer's FLASH waits for one",
    ),
    "release_flash": (
        frozenset({"supervisor"}),
        "only a supervisor releases a held FLASH",
    ),
    "reject_flash": (
        frozenset({"supervisor"}),
        "only a supervisor, or the officer who wrote it, withdraws a held FLASH",
    ),
    "acknowledge": (_WATCH, "duty officers and supervisors acknowledge messages"),
    "create_channel": (frozenset({"supervisor"}), "only a supervisor proposes a channel"),
    "agree_channel": (frozenset({"supervisor"}), "only a supervisor agrees to a channel"),
    "pin_peer": (frozenset({"admin"}), "only an administrator pins a peer"),
    "repoint_link": (frozenset({"admin"}), "only an administrator changes a peer's links"),
    "manage_operators": (frozenset({"admin"}), "only an administrator manages operator accounts"),
    "clear_alarm": (frozenset({"supervisor"}), "only a supervisor clears an alarm"),
    "certify_translation": (_WATCH, "duty officers and supervisors certify translations"),
    "countersign_translation": (
        _WATCH,
        "duty officers and supervisors countersign translations",
    ),
    "export_evidence": (
        frozenset({"supervisor", "auditor"}),
        "supervisors and auditors export evidence",
    ),
    "verify": (_EVERY_ACCOUNT, "every operator may verify the record"),
    "test_links": (frozenset({"supervisor", "admin"}), "supervisors and administrators test links"),
    "recover": (
        frozenset({"admin"}),
        "only an administrator rebuilds the log from the peers",
    ),
    "backup": (
        frozenset({"admin"}),
        "only an administrator backs up the terminal (its database, keys and configuration)",
    ),
    "handover": (_WATCH, "duty officers and supervisors hand over the watch"),
    "rotate_keys": (
        frozenset({"admin"}),
        "only an administrator replaces the terminal's keys",
    ),
    "revoke_keys": (
        frozenset({"admin"}),
        "only an administrator revokes a card (the terminal's own, or takes in a peer's "
        "revocation)",
    ),
    "read_metrics": (
        frozenset({SCRAPER}),
        "the metrics are read with a scrape token or the console token, not an operator account",
    ),
}

ACTIONS = tuple(RULES)

PRECEDENCES = ("FLASH", "IMMEDIATE", "PRIORITY", "ROUTINE")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: an operator account, or the local administrator; and through what."""

    name: str
    role: str
    #: console, api or cli
    via: str = "cli"

    @property
    def local_admin(self) -> bool:
        return self.role == LOCAL_ADMIN


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    action: str
    role: str
    #: The rule that decided, in words; names the role.
    reason: str

    @property
    def allowed(self) -> bool:
        return self.outcome == "allowed"

    @property
    def held(self) -> bool:
        return self.outcome == "held"

    @property
    def refused(self) -> bool:
        return self.outcome == "refused"


def decide(actor: Actor, action: str, **context: Any) -> Decision:
    """Whether ``actor`` may take ``action`` now.

    Context: ``precedence`` for ``send`` (a FLASH is decided by the
    ``send_flash`` rule: held for a duty officer); ``author`` for
    ``reject_flash`` (the officer who wrote the held message may withdraw it).
    """
    if action not in RULES:
        raise ValueError(f"no rule for the action {action!r}")
    role = actor.role
    word = ROLE_WORDS.get(role, f"role {role}")
    if role == LOCAL_ADMIN:
        return Decision(
            "allowed", action, role, "the local administrator may do everything (equal to root)"
        )
    if role not in ROLE_WORDS:
        return Decision("refused", action, role, f"{word} is not a role of this terminal")
    if action == "send":
        precedence = str(context.get("precedence", "ROUTINE")).upper()
        roles, rule = RULES["send"]
        if role not in roles:
            return Decision("refused", action, role, f"{word} cannot send: {rule}")
        if precedence == "FLASH":
            flash_roles, flash_rule = RULES["send_flash"]
            if role in flash_roles:
                return Decision("allowed", action, role, flash_rule)
            if role == "duty_officer":
                return Decision(
                    "held", action, role, f"{word}'s FLASH is held for a supervisor's release"
                )
            return Decision("refused", action, role, f"{word} cannot send a FLASH: {flash_rule}")
        return Decision("allowed", action, role, rule)
    if action == "reject_flash" and context.get("author") == actor.name:
        return Decision(
            "allowed", action, role, "the officer who wrote a held FLASH may withdraw it"
        )
    roles, rule = RULES[action]
    if role in roles:
        return Decision("allowed", action, role, rule)
    return Decision("refused", action, role, f"{word} may not {_VERBS[action]}: {rule}")


_VERBS: Mapping[str, str] = {
    "read": "read",
    "send": "send",
    "send_flash": "send a FLASH",
    "release_flash": "release a held FLASH",
    "reject_flash": "withdraw a held FLASH",
    "acknowledge": "acknowledge a message",
    "create_channel": "propose a channel",
    "agree_channel": "agree to a channel",
    "pin_peer": "pin a peer",
    "repoint_link": "change a peer's links",
    "manage_operators": "manage operator accounts",
    "clear_alarm": "clear an alarm",
    "certify_translation": "certify a translation",
    "countersign_translation": "countersign a translation",
    "export_evidence": "export evidence",
    "verify": "verify the record",
    "test_links": "test links",
    "recover": "recover the log from the peers",
    "backup": "back up the terminal",
    "handover": "hand over the watch",
    "rotate_keys": "rotate the terminal's keys",
    "revoke_keys": "revoke a card",
    "read_metrics": "read the metrics",
}


def require(actor: Actor, action: str, **context: Any) -> Decision:
    """``decide``, raising ``NotPermitted`` when refused (a held decision is returned)."""
    decision = decide(actor, action, **context)
    if decision.refused:
        raise NotPermitted(f"{actor.name}: {decision.reason}", decision=decision)
    return decision
