"""What the console says, in the operator's language, about the terminal's own codes.

The terminal records and raises things in language-free codes: an alarm's
``kind`` and ``subject``, an error's ``code`` and ``params``
(``parley.errors``), a negative receipt's ``code``, a policy action. Each table
here gives the sentence the console shows for one code (marked for
translation, translated where it is shown, with the values of ``params``); the
English text the terminal recorded stays available beside it as a technical
detail, marked as English.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from parley.console import i18n
from parley.console.i18n import N_
from parley.errors import NotPermitted, ParleyError, RemoteError, VerificationError

__all__ = [
    "ACTION_TEXT",
    "ALARM_TEXT",
    "ERROR_TEXT",
    "REJECTION_TEXT",
    "STATUS_TEXT",
    "action_words",
    "alarm_words",
    "error_words",
    "rejection_words",
    "status_words",
]


#: An alarm's kind -> what it says, with its ``subject`` (``card_expiry``: ``party``,
#: ``version`` and ``days``, read from its subject).
ALARM_TEXT: Mapping[str, str] = {
    "ack_overdue": N_(
        "Message %(subject)s: the other side has not acknowledged it within its deadline."
    ),
    "ack_reminder": N_("Message %(subject)s awaits acknowledgement: its deadline has passed."),
    "negative_receipt": N_(
        "The other side refused message %(subject)s and answered with a negative receipt."
    ),
    "content_refused": N_(
        "This terminal refused the content of message %(subject)s and answered with a "
        "negative receipt."
    ),
    "link_test_failed": N_("Link %(subject)s failed its test."),
    "peer_unreachable": N_("%(subject)s cannot be reached: every link to it is down."),
    "peer_quota_exceeded": N_(
        "%(subject)s sends more than its quota: its deliveries are refused until the rate allows."
    ),
    "checkpoint_rejected": N_(
        "A checkpoint of the log of %(subject)s was refused: this terminal does not cosign it."
    ),
    "equivocation": N_("%(subject)s showed two different histories of its log: the proof is kept."),
    "rollback": N_(
        "%(subject)s offered its log smaller than one already cosigned: the proof is kept."
    ),
    "rolled_back": N_(
        "This terminal's log is behind what its peers have seen: it signs nothing until it is "
        "recovered."
    ),
    "backup_failed": N_("The scheduled backup into %(subject)s failed."),
    "revocation_refused": N_("A revocation sent in message %(subject)s was refused."),
    "key_revoked": N_(
        "Identity card %(subject)s was revoked: nothing it signed after the compromise is accepted."
    ),
    "card_rotated": N_("%(subject)s: a new identity card, signed by the card pinned, is in use."),
    "superseded_key": N_(
        "A message signed with the rotated-out or revoked keys of card %(subject)s was "
        "refused: those keys may be in other hands."
    ),
    "card_expiry": N_(
        "The identity card of %(party)s (version %(version)s) expires within %(days)s days: "
        "arrange a new card with the peers."
    ),
    "card_expired": N_(
        "The identity card of %(party)s (version %(version)s) has expired: arrange a new card "
        "with the peers."
    ),
}
_UNKNOWN_ALARM = N_("Alarm about %(subject)s: see the recorded text.")
_CARD_EXPIRY_SUBJECT = re.compile(r"(?P<party>\S+) v(?P<version>\d+) (?P<days>\d+)d")

#: An error's code -> what the operator is told (``%(…)s``: the error's ``params``).
ERROR_TEXT: Mapping[str, str] = {
    "already_acknowledged": N_("This message was already acknowledged by %(operator)s."),
    "nothing_to_acknowledge": N_("This message needs no acknowledgement."),
    "channel_not_agreed": N_("Channel %(channel)s is not agreed yet: waiting for %(waiting)s."),
    "already_decided": N_("This held FLASH has already been released or withdrawn."),
    "notice_too_short": N_(
        "This notice needs %(hours)s hours' notice and gives %(ahead)s: mark it as a late "
        "notice, with a reason, to send it anyway."
    ),
    "rolled_back": N_(
        "This terminal is frozen: its log is behind what its peers have seen, and it signs "
        "nothing until it is recovered."
    ),
    "unknown_peer": N_("There is no pinned card for that party."),
    "no_message": N_("There is no such message on this terminal."),
    "no_exchange": N_("There is no such exchange on this terminal."),
    "no_such_alarm": N_("There is no such alarm, or it is already cleared."),
}
_BY_CULPRIT = {
    "us": N_("The terminal refused this request."),
    "peer": N_("The other party's input was refused."),
    "record": N_("A record does not verify."),
}

#: A negative receipt's code -> why the content was refused.
REJECTION_TEXT: Mapping[str, str] = {
    "unknown_form": N_("The form, or its version, is not known to the receiving terminal."),
    "definition_mismatch": N_("The two terminals' definitions of this form differ."),
    "invalid_form": N_("The form's data breaks its definition."),
    "malformed_form": N_("The form is not in the required shape."),
}
_UNKNOWN_REJECTION = N_("Refused for a reason this terminal does not know.")

#: The HTTP status of a refused request -> what the page says.
STATUS_TEXT: Mapping[int, str] = {
    400: N_("The request was not understood: reload the page and try again."),
    403: N_(
        "This request was refused: it did not come from this console's own page. Reload the "
        "page and try again."
    ),
    404: N_("There is no such page on this terminal."),
    405: N_("The request was not understood: reload the page and try again."),
    422: N_("The request was not understood: reload the page and try again."),
}
_OTHER_STATUS = N_("The request was refused.")

#: A policy action (``parley.service.policy``) -> what a role may or may not do.
ACTION_TEXT: Mapping[str, str] = {
    "read": N_("read the record"),
    "send": N_("send messages"),
    "send_flash": N_("send a FLASH without a supervisor's release"),
    "release_flash": N_("release a held FLASH"),
    "reject_flash": N_("withdraw a held FLASH"),
    "acknowledge": N_("acknowledge messages"),
    "create_channel": N_("propose a channel"),
    "agree_channel": N_("agree to a channel"),
    "clear_alarm": N_("clear alarms"),
    "export_evidence": N_("export the evidence bundle"),
    "verify": N_("verify the record"),
    "test_links": N_("test the links"),
    "handover": N_("hand over the watch"),
    "manage_operators": N_("manage operator accounts"),
    "pin_peer": N_("pin a peer"),
    "repoint_link": N_("change a peer's links"),
    "certify_translation": N_("certify translations"),
    "countersign_translation": N_("countersign translations"),
}


def _gettext(message: str, lang: str) -> str:
    return i18n.translations(lang).gettext(message)


def _worded(template: str, params: Mapping[str, str], lang: str) -> str | None:
    try:
        return _gettext(template, lang) % dict(params)
    except (KeyError, TypeError, ValueError):  # a value the code did not come with
        return None


def alarm_words(kind: str, subject: str, lang: str) -> str:
    """What an alarm says, in ``lang``."""
    if kind == "card_expiry":
        found = _CARD_EXPIRY_SUBJECT.fullmatch(subject)
        if found is not None:
            key = "card_expired" if found["days"] == "0" else "card_expiry"
            worded = _worded(ALARM_TEXT[key], found.groupdict(), lang)
            if worded is not None:
                return worded
    template = ALARM_TEXT.get(kind, _UNKNOWN_ALARM)
    worded = _worded(template, {"subject": subject}, lang)
    return worded or _worded(_UNKNOWN_ALARM, {"subject": subject}, lang) or subject


def error_words(exc: ParleyError | None, lang: str, code: str | None = None) -> str:
    """What the operator is told of a refusal (``exc``, or only its ``code``), in ``lang``."""
    code = exc.code if exc is not None else code
    template = ERROR_TEXT.get(code or "")
    if template is not None:
        worded = _worded(template, exc.params if exc is not None else {}, lang)
        if worded is not None:
            return worded
    if isinstance(exc, NotPermitted):
        return _gettext("Your role does not allow this.", lang)
    culprit = "us"
    if isinstance(exc, RemoteError):
        culprit = "peer"
    elif isinstance(exc, VerificationError):
        culprit = "record"
    return _gettext(_BY_CULPRIT[culprit], lang)


def rejection_words(code: str | None, lang: str) -> str:
    """Why content was refused with a negative receipt, in ``lang``."""
    return _gettext(REJECTION_TEXT.get(code or "", _UNKNOWN_REJECTION), lang)


def status_words(status: int, lang: str) -> str:
    """What a page refused with an HTTP ``status`` says, in ``lang``."""
    return _gettext(STATUS_TEXT.get(status, _OTHER_STATUS), lang)


def action_words(action: str, lang: str) -> str | None:
    """A policy action in words (``send messages``), or None for one not listed."""
    text = ACTION_TEXT.get(action)
    return _gettext(text, lang) if text is not None else None
