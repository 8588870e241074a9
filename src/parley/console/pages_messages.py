"""Console pages for messages: inbox, outbox, one message, compose, the FLASH alert.

* ``/inbox`` and ``/outbox``: what needs action first (the read model's
  ``action_order``: awaiting an acknowledgement, then precedence, then
  newest first); the table
  bodies are fragments (``/fragments/inbox``, ``/fragments/outbox``) that
  htmx refreshes every second. An unacknowledged received message is
  highlighted with a live countdown to its acknowledgement deadline.
* ``/fragments/flash``: a banner for every received FLASH not yet
  acknowledged (every page polls it every second).
* ``/messages/{id}``: its receipts and acknowledgements follow live
  (``/fragments/messages/{id}/status``, polled every second, answers 204
  while nothing changed), and the message as written (a form rendered in the
  reader's language), a machine translation clearly marked as such, the
  certified translations, and the **evidence**, recomputed from the stored
  records on every view (``message_evidence``): the sender's signature, the
  inclusion of the log entry under a signed checkpoint, and the other
  parties' cosignatures over it.
* ``/compose``: free text or a form (inputs named by JSON Pointer, built
  from ``describe_form``), validated as the operator types and again on
  sending. A duty officer's FLASH waits in ``held_messages`` until a
  supervisor releases it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any

import referencing
import referencing.jsonschema
import structlog
from fastapi import APIRouter, Form
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, relevance
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from parley.config import Config
from parley.console import i18n, texts
from parley.console.i18n import gettext
from parley.console.web import N_, CurrentPage, Page, not_found_page, render, when
from parley.core.canonical import JSONValue, canonical_bytes
from parley.core.envelope import PRECEDENCES
from parley.core.forms import COMMON_ID, FORMATS, FormDefinition, FormRegistry, InvalidFormData
from parley.errors import NotPermitted, ParleyError, UsageError
from parley.forms.describe import FieldDescription, describe_form
from parley.forms.render import RenderedField, format_number, render_form
from parley.forms.translate import (
    MachineTranslation,
    Translator,
    TranslatorUnavailable,
    machine_translate,
    translator_for,
)
from parley.service.evidence import message_evidence
from parley.service.notices import service_notices
from parley.service.operations import Operations, build_body
from parley.service.terminal import Terminal

__all__ = [
    "FieldNode",
    "RecipientState",
    "collect_form_data",
    "form_nodes",
    "recipient_states",
    "router",
    "status_key",
    "validate_form_data",
]

log = structlog.get_logger("parley.console")

router = APIRouter()

RANK = {p: i for i, p in enumerate(PRECEDENCES)}  # FLASH 0 … ROUTINE 3
HUMAN_KINDS = ("text", "form")
SHOWN_KINDS = ("text", "form", "service")
LISTED = 200  # rows on the inbox and the outbox


#: What each precedence means, shown beside its code (the codes are never translated).
PRECEDENCE_HELP: Mapping[str, str] = {
    "FLASH": N_("Threat to life or risk of armed conflict: acknowledge at once"),
    "IMMEDIATE": N_("Situation that needs action within the hour"),
    "PRIORITY": N_("Important: action within hours"),
    "ROUTINE": N_("Normal business"),
}


# --------------------------------------------------------------------------
# Small helpers


def error_id(key: str) -> str:
    """The id of the element that holds the errors of one field (stable across requests)."""
    return "fe-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def _form_title(registry: FormRegistry, body: Mapping[str, Any], lang: str) -> str:
    form = body.get("form")
    if not isinstance(form, Mapping):
        return ""
    name, version = form.get("name"), form.get("version")
    definition = (
        registry.get(name, version) if isinstance(name, str) and isinstance(version, int) else None
    )
    if definition is None:
        return str(name)[:64]
    return str(definition.title.get(lang) or definition.title.get("en") or definition.name)


def summary(registry: FormRegistry, kind: str, body: Mapping[str, Any], lang: str) -> str:
    """One line that says what a message is about (the sender's words, cut short)."""
    if kind == "text":
        text = str(body.get("text", ""))
        first = text.strip().splitlines()[0] if text.strip() else ""
        return first[:120] + ("…" if len(first) > 120 or "\n" in text.strip() else "")
    if kind == "form":
        return _form_title(registry, body, lang)
    if kind == "service":
        return "; ".join(service_words(body, lang))
    catalog = i18n.translations(lang)
    if kind == "ack":
        ack = body.get("ack")
        acknowledged = ack.get("envelope_id") if isinstance(ack, Mapping) else None
        return catalog.gettext("Acknowledgement of message %(id)s") % {"id": str(acknowledged)[:64]}
    if kind == "key":
        return catalog.gettext("Announcement of a new encryption key")
    if kind == "test":
        return catalog.gettext("Link test")
    return kind


#: Each notice of a service message (``parley.service.notices``) in words.
NOTICE_TEXT: Mapping[str, str] = {
    "channel_proposal": N_("Channel %(name)s proposed, with %(members)s"),
    "channel_agreement": N_("Channel %(name)s agreed"),
    "card_rotation": N_("New identity card announced (version %(version)s)"),
    "revocation": N_("Identity card of %(party)s revoked (version %(version)s)"),
    "unknown": N_("Service notice of a kind this terminal does not know: %(what)s"),
}


def service_words(body: Mapping[str, Any], lang: str) -> list[str]:
    """What a service message says, one sentence a notice, in ``lang``."""
    catalog = i18n.translations(lang)
    return [
        catalog.gettext(NOTICE_TEXT[notice.kind]) % notice.params
        for notice in service_notices(body)
    ]


# --------------------------------------------------------------------------
# Listings: through the read model (parley.service.reads), which checks every
# row against its signed envelope; a row that does not verify is listed as such.


def _unverified_row(item: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": item["id"],
        "problem": item["problem"],
        "precedence": "",
        "stored": when(item["stored_at"]),
    }


def inbox_rows(terminal: Terminal, lang: str) -> list[dict[str, Any]]:
    rows = []
    for item in terminal.messages("in", limit=LISTED):
        if not item["verified"]:
            rows.append(_unverified_row(item))
            continue
        acked = item["acknowledged_at"] is not None
        rejection = item["rejection"]
        rows.append(
            {
                "id": item["id"],
                "problem": None,
                "precedence": item["precedence"],
                "sender": item["sender"],
                "channel": item["channel"],
                "kind": item["kind"],
                "exercise": item["exercise"],
                "received": when(item["stored_at"]),
                "summary": summary(terminal.forms, item["kind"], item["body"], lang),
                "unacked": item["awaiting_ack"],
                "ack_due": item["ack_due"] if item["awaiting_ack"] else None,
                "acked_by": item["acknowledged_by"],
                "acked_at": when(item["acknowledged_at"]) if acked else None,
                "refused": (rejection["code"], rejection["reason"]) if rejection else None,
            }
        )
    return rows


@dataclass(frozen=True, slots=True)
class RecipientState:
    """Where a sent message stands with one recipient."""

    party: str
    state: str  # pending, receipted (awaiting an acknowledgement), delivered, acknowledged, refused
    receipt_at: str | None = None
    ack_by: str | None = None
    ack_at: str | None = None
    refusal: str | None = None  # the refusal as recorded: "code: reason"
    refusal_code: str | None = None
    attempts: int = 0
    last_error: str | None = None


def recipient_states(
    recipients: Sequence[str],
    receipts: Mapping[str, Any],
    acks: Mapping[str, Mapping[str, Any]],
    rejections: Mapping[str, Mapping[str, Any]],
    delivery: Mapping[str, Mapping[str, Any]],
    *,
    needs_ack: bool = True,
) -> list[RecipientState]:
    """Each recipient's state, from the receipts, acks and outbox rows of one message;
    a message no human acknowledges (``needs_ack`` False: a service message) is
    ``delivered`` once receipted, never waiting for an acknowledgement."""
    states = []
    for party in recipients:
        sent = delivery.get(party, {})
        receipt = receipts.get(party)
        state, ack_by, ack_at, refusal, refusal_code = "pending", None, None, None, None
        if party in rejections:
            rejection = rejections[party]
            state, refusal = "refused", f"{rejection.get('code')}: {rejection.get('reason')}"
            refusal_code = str(rejection.get("code"))
        elif party in acks:
            ack = acks[party]
            state, ack_by, ack_at = "acknowledged", str(ack.get("operator")), when(ack.get("at"))
        elif receipt:
            state = "receipted" if needs_ack else "delivered"
        states.append(
            RecipientState(
                party=party,
                state=state,
                receipt_at=when(receipt) if receipt else None,
                ack_by=ack_by,
                ack_at=ack_at,
                refusal=refusal,
                refusal_code=refusal_code,
                attempts=int(sent.get("attempts") or 0),
                last_error=sent.get("last_error"),
            )
        )
    return states


def outbox_rows(terminal: Terminal, lang: str) -> list[dict[str, Any]]:
    result = []
    for item in terminal.messages("out", limit=LISTED):
        if not item["verified"]:
            result.append(_unverified_row(item))
            continue
        states = recipient_states(
            item["recipients"],
            item["receipts"],
            item["acks"],
            item["rejections"],
            item["delivery"],
            needs_ack=item["needs_ack"],
        )
        result.append(
            {
                "id": item["id"],
                "problem": None,
                "precedence": item["precedence"],
                "recipients": item["recipients"],
                "channel": item["channel"],
                "kind": item["kind"],
                "exercise": item["exercise"],
                "sent": when(item["stored_at"]),
                "operator": item["operator"],
                "summary": summary(terminal.forms, item["kind"], item["body"], lang),
                "states": states,
                "refused": any(s.state == "refused" for s in states),
                "ack_due": item["ack_due"] if item["awaiting_ack"] else None,
            }
        )
    return result


def held_rows(ops: Operations, lang: str) -> list[dict[str, Any]]:
    """FLASH messages composed by duty officers, waiting for a supervisor, newest first."""
    return [
        {
            "id": item["id"],
            "operator": item["operator"],
            "created": when(item["created_at"]),
            "precedence": item["precedence"] or "FLASH",
            "recipients": item["to"],
            "channel": item["channel"],
            "exercise": item["exercise"],
            "summary": summary(ops.terminal.forms, item["kind"], item["body"], lang),
        }
        for item in reversed(ops.held_messages())
    ]


def flash_alerts(terminal: Terminal, lang: str) -> list[dict[str, Any]]:
    """Every received FLASH a human has not acknowledged yet, oldest first.

    The index finds the candidates; each is shown only as its signed envelope says.
    """
    ids = terminal.unacknowledged_flash()
    checked = terminal.messages_by_id(ids)
    alerts = []
    for envelope_id in ids:
        item = checked.get(envelope_id)
        if item is None or not item["verified"] or item["precedence"] != "FLASH":
            continue  # listed in the inbox as not verifying
        alerts.append(
            {
                "id": envelope_id,
                "sender": item["sender"],
                "received": when(item["stored_at"]),
                "exercise": item["exercise"],
                "summary": summary(terminal.forms, item["kind"], item["body"], lang),
                "ack_due": item["ack_due"],
                "refused": item["rejection"] is not None,
            }
        )
    return alerts


# --------------------------------------------------------------------------
# Evidence


# --------------------------------------------------------------------------
# Composing a form: its fields as inputs named by JSON Pointer


@dataclass(slots=True)
class FieldNode:
    """One input (or group of inputs) of a form, at a concrete JSON Pointer."""

    pointer: str
    label: str
    help: str
    required: bool
    widget: str  # text, textarea, integer, date, datetime, boolean, select, multi, lines, json,
    # group or list
    options: tuple[tuple[str, str], ...] = ()
    value: str = ""
    values: tuple[str, ...] = ()  # a multiple select
    item_type: str = "string"  # lines: the type of each line
    children: list[FieldNode] = field(default_factory=list)

    def walk(self) -> Iterable[FieldNode]:
        yield self
        for child in self.children:
            yield from child.walk()


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _merged(registry: FormRegistry, schema: Mapping[str, Any]) -> dict[str, Any]:
    """A schema with its ``$ref`` chain followed; the referring schema's keywords win."""
    merged = dict(schema)
    for _ in range(16):
        if "$ref" not in merged:
            break
        target = registry.resolve(merged.pop("$ref"))
        merged = {**target, **merged}
    return merged


def _schema_at(registry: FormRegistry, definition: FormDefinition, path: str) -> dict[str, Any]:
    """The schema at a ``describe_form`` path (``/persons/[]/name``)."""
    schema = _merged(registry, definition.schema)
    for step in path.split("/")[1:]:
        if step == "[]":
            items = schema.get("items")
            schema = _merged(registry, items if isinstance(items, Mapping) else {})
        else:
            properties = schema.get("properties") or {}
            sub = properties.get(step)
            schema = _merged(registry, sub if isinstance(sub, Mapping) else {})
    return schema


def _scalar_widget(schema: Mapping[str, Any]) -> str:
    if "enum" in schema:
        return "select"
    if "oneOf" in schema or "anyOf" in schema:
        return "json"
    kind = schema.get("type")
    if kind in ("integer", "number"):
        return "integer"
    if kind == "boolean":
        return "boolean"
    if kind == "string":
        if "format" in schema:
            return {"date": "date", "date-time": "datetime"}.get(str(schema["format"]), "text")
        longest = schema.get("maxLength")
        return "textarea" if isinstance(longest, int) and longest > 200 else "text"
    return "json"


def _count_items(pointer: str, values: Mapping[str, Sequence[str]]) -> int:
    """How many items of the list at ``pointer`` the submitted inputs hold (at least one)."""
    found = re.compile(re.escape(pointer) + r"/([0-9]+)(?:/|$)")
    indexes = [int(match[1]) for key in values if (match := found.match(key))]
    return max(indexes, default=0) + 1


def form_nodes(
    registry: FormRegistry,
    name: str,
    version: int,
    lang: str,
    values: Mapping[str, Sequence[str]] | None = None,
    add_item: str | None = None,
) -> list[FieldNode]:
    """The inputs of a form, from ``describe_form``, holding ``values`` (pointer -> strings).

    Objects are groups of inputs; a list of objects shows as many items as
    ``values`` holds (one when empty), plus one more when ``add_item`` names
    it; a list of values is a multiple choice (an enumeration) or one value
    a line; a choice between shapes (``oneOf``) is entered as JSON.
    """
    definition = registry.get(name, version)
    if definition is None:
        raise UsageError(f"no form {name} version {version}")
    values = values or {}
    described = describe_form(registry, name, version, lang)
    children: dict[str, list[FieldDescription]] = {}
    for d in described:
        children.setdefault(d.path.rsplit("/", 1)[0], []).append(d)

    def value_of(pointer: str) -> str:
        found = values.get(pointer)
        return found[0] if found else ""

    def build(path: str, pointer: str) -> list[FieldNode]:
        nodes = []
        for d in children.get(path, []):
            key = d.path.rsplit("/", 1)[1]
            at = f"{pointer}/{_escape(key)}"
            schema = _schema_at(registry, definition, d.path)
            node = FieldNode(at, d.label, d.help, d.required, "text", d.values)
            if schema.get("type") == "array":
                items = f"{d.path}/[]"
                item_schema = _schema_at(registry, definition, items)
                if items in children:
                    node.widget = "list"
                    count = _count_items(at, values) + (1 if add_item == at else 0)
                    for i in range(count):
                        item = FieldNode(f"{at}/{i}", f"{i + 1}.", "", False, "group")
                        item.children = build(items, f"{at}/{i}")
                        node.children.append(item)
                elif "enum" in item_schema:
                    node.widget = "multi"
                    labels = item_schema.get("x-enum", {})
                    node.options = tuple(
                        (str(v), str(labels.get(str(v), {}).get(lang, v)))
                        for v in item_schema["enum"]
                    )
                    node.values = tuple(values.get(at, ()))
                else:
                    node.widget = "lines"
                    node.item_type = _scalar_widget(item_schema)
                    node.value = value_of(at)
            elif d.path in children and "oneOf" not in schema and "anyOf" not in schema:
                node.widget = "group"
                node.children = build(d.path, at)
            else:
                node.widget = _scalar_widget(schema)
                node.value = value_of(at)
            nodes.append(node)
        return nodes

    return build("", "")


_INTEGER = re.compile(r"[+-]?[0-9]+")
_LOCAL_TIME = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})[T ]([0-9]{2}:[0-9]{2})(:[0-9]{2})?(Z?)")


def _refuse_float(text: str) -> Any:
    raise ValueError(f"the number {text} is not an integer; Parley signs no fractions")


def _refuse_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def parse_json(text: str) -> Any:
    return json.loads(text, parse_float=_refuse_float, parse_constant=_refuse_constant)


def _convert(widget: str, raw: str) -> tuple[Any, str | None]:
    """(value, error) for one typed value; the error is shown next to the field."""
    if widget == "integer":
        if not _INTEGER.fullmatch(raw.strip()):
            return None, gettext("Enter a whole number.")
        return int(raw.strip()), None
    if widget == "boolean":
        return raw == "true", None
    if widget == "datetime":
        match = _LOCAL_TIME.fullmatch(raw.strip())
        if match:  # what a browser's clock input gives: seconds and the Z added
            return f"{match[1]}T{match[2]}{match[3] or ':00'}Z", None
        return raw.strip(), None
    if widget == "json":
        try:
            return parse_json(raw), None
        except (ValueError, RecursionError) as exc:
            return None, gettext("Not valid JSON: %(problem)s") % {"problem": str(exc)[:200]}
    if widget == "date":
        return raw.strip(), None
    return raw.replace("\r\n", "\n"), None  # a browser sends a textarea's lines with CRLF


@dataclass(slots=True)
class Collected:
    """Form data built from the inputs, with the inputs' own errors."""

    data: dict[str, Any]
    errors: dict[str, str]
    #: list pointer -> the input index of each item kept (empty items are dropped)
    kept: dict[str, list[int]]


def collect_form_data(nodes: Sequence[FieldNode]) -> Collected:
    """The form data the inputs hold; empty inputs are left out, empty list items dropped."""
    errors: dict[str, str] = {}
    kept: dict[str, list[int]] = {}

    def scalar(node: FieldNode) -> tuple[bool, Any]:
        if node.widget == "multi":
            allowed = {v for v, _ in node.options}
            chosen = [v for v in node.values if v in allowed]
            return bool(chosen), chosen
        if node.widget == "lines":
            items = []
            for n, line in enumerate(node.value.splitlines()):
                if not line.strip():
                    continue
                value, problem = _convert(node.item_type, line.strip())
                if problem:
                    errors.setdefault(node.pointer, f"{n + 1}: {problem}")
                items.append(value)
            return bool(items), items
        if not node.value.strip():
            return False, None
        value, problem = _convert(node.widget, node.value)
        if problem:
            errors[node.pointer] = problem
        return True, value

    def group(nodes: Sequence[FieldNode]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for node in nodes:
            key = node.pointer.rsplit("/", 1)[1].replace("~1", "/").replace("~0", "~")
            present, value = one(node)
            if present:
                result[key] = value
        return result

    def one(node: FieldNode) -> tuple[bool, Any]:
        if node.widget == "group":
            value = group(node.children)
            return bool(value), value
        if node.widget == "list":
            items, indexes = [], []
            for i, item in enumerate(node.children):
                value = group(item.children)
                if value:
                    items.append(value)
                    indexes.append(i)
            kept[node.pointer] = indexes
            return bool(items), items
        return scalar(node)

    return Collected(group(nodes), errors, kept)


@cache
def _validator(registry: FormRegistry, name: str, version: int) -> Draft202012Validator:
    """A validator of one form that reports every error (the registry reports the best one)."""
    definition = registry.get(name, version)
    assert definition is not None
    resource = referencing.Resource.from_contents(
        dict(registry.common), default_specification=referencing.jsonschema.DRAFT202012
    )
    refs: referencing.Registry[Any] = referencing.Registry().with_resource(COMMON_ID, resource)
    return Draft202012Validator(definition.schema, registry=refs, format_checker=FORMATS)


def _bounds(schema: Any) -> tuple[Any, Any] | None:
    """A field's inclusive (minimum, maximum) when it has both."""
    if isinstance(schema, Mapping) and "minimum" in schema and "maximum" in schema:
        return schema["minimum"], schema["maximum"]
    return None


def _expected(schema: Any) -> str:
    """What a field with a pattern expects, in words: its help text in the current language.

    A pattern means nothing to an operator; every patterned field of the shipped
    forms says in ``x-help`` what it takes (a test checks it).
    """
    lang = i18n.current_lang.get()
    words = schema.get("x-help") if isinstance(schema, Mapping) else None
    if isinstance(words, Mapping):
        text = words.get(lang) or words.get("en")
        if isinstance(text, str) and text:
            return gettext("Not in the expected form. Expected: %(what)s") % {"what": text}
    return gettext("Not in the required form.")


def _message(error: ValidationError) -> str:
    """An operator's message for one schema error, in the current language."""
    v, limit = error.validator, error.validator_value
    if v == "required":
        return gettext("Required.")
    if v == "type":
        if limit in ("integer", "number"):
            return gettext("Enter a whole number.")
        return gettext("Wrong kind of value: %(expected)s expected.") % {"expected": limit}
    if v == "format":
        if limit == "date-time":
            return gettext("Enter a time in UTC as YYYY-MM-DDTHH:MM:SSZ.")
        if limit == "date":
            return gettext("Enter a date as YYYY-MM-DD.")
        return gettext("Not in the required form.")
    if v in ("enum", "const"):
        return gettext("Choose one of the listed values.")
    if v == "pattern":
        return _expected(error.schema)
    if v == "minLength":
        return gettext("At least %(n)s characters.") % {"n": limit}
    if v == "maxLength":
        return gettext("At most %(n)s characters.") % {"n": limit}
    bounds = _bounds(error.schema)
    if v in ("minimum", "maximum") and bounds is not None:
        low, high = bounds
        return gettext("A number from %(low)s to %(high)s.") % {
            "low": format_number(low, i18n.current_lang.get()),
            "high": format_number(high, i18n.current_lang.get()),
        }
    if v in ("minimum", "exclusiveMinimum"):
        return gettext("At least %(n)s.") % {"n": limit}
    if v in ("maximum", "exclusiveMaximum"):
        return gettext("At most %(n)s.") % {"n": limit}
    if v == "minItems":
        return gettext("Give at least %(n)s.") % {"n": limit}
    if v == "maxItems":
        return gettext("Give at most %(n)s.") % {"n": limit}
    if v == "uniqueItems":
        return gettext("Each value only once.")
    if v == "additionalProperties":
        return gettext("A field this form does not have: %(problem)s") % {"problem": error.message}
    if v in ("oneOf", "anyOf"):
        return gettext("Matches none of the allowed shapes.")
    return error.message[:300]


def _input_pointer(path: Sequence[Any], kept: Mapping[str, list[int]]) -> str:
    """The pointer of the input a data path came from (list items may have been dropped)."""
    pointer = ""
    for key in path:
        if isinstance(key, int) and pointer in kept and key < len(kept[pointer]):
            key = kept[pointer][key]
        pointer += "/" + _escape(str(key))
    return pointer


def validate_form_data(
    registry: FormRegistry, name: str, version: int, data: Any, kept: Mapping[str, list[int]]
) -> dict[str, str]:
    """Every schema error in ``data``, by the JSON Pointer of the input it belongs to."""
    errors: dict[str, str] = {}
    for error in sorted(_validator(registry, name, version).iter_errors(data), key=relevance):
        pointer = _input_pointer(list(error.absolute_path), kept)
        if error.validator == "required" and isinstance(error.instance, dict):
            for missing in error.validator_value:
                if missing not in error.instance:
                    errors.setdefault(f"{pointer}/{_escape(missing)}", _message(error))
            continue
        errors.setdefault(pointer or "/", _message(error))
    return errors


# --------------------------------------------------------------------------
# Composing: the whole request


@dataclass(slots=True)
class Composed:
    """What an operator filled in, and what is wrong with it."""

    text: str = ""
    form: str = ""
    version: int | None = None
    json_data: str = ""
    lang: str = "en"
    precedence: str = "ROUTINE"
    exercise: bool = False
    to: list[str] = field(default_factory=list)
    channel: str = ""
    nodes: list[FieldNode] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # input key -> message
    general: list[str] = field(default_factory=list)
    #: What the terminal recorded of a refusal, in English (shown as a technical detail).
    details: list[str] = field(default_factory=list)
    kind: str = ""
    body: dict[str, JSONValue] = field(default_factory=dict)
    recipients: list[str] = field(default_factory=list)
    resolved_channel: str | None = None

    #: The error places the page showed when it asked (None: a whole page is rendered).
    shown: set[str] | None = None
    #: The inputs the operator has changed (None: every error is shown, as when sending).
    touched: set[str] | None = None

    def containers(self) -> list[tuple[str, str]]:
        """(error id, key) of every place an error can be shown on the page."""
        keys = ["text", "to", "precedence", "json_data", "form"]
        keys += [n.pointer for node in self.nodes for n in node.walk()]
        if self.shown is not None:  # only those the page has: htmx finds each by its id
            keys = [k for k in keys if k in self.shown]
        return [(error_id(k), k) for k in keys]

    def refused(self, exc: ParleyError, lang: str) -> None:
        """The terminal refused to send: why, in ``lang``, and what it recorded."""
        self.general.append(texts.error_words(exc, lang))
        self.details.append(f"{exc.code}: {exc}")

    def _shown_errors(self) -> dict[str, str]:
        """The errors to show: all of them, or while typing only those of inputs touched."""
        if self.touched is None:
            return self.errors
        touched = {"to" if t == "channel" else t for t in self.touched}
        as_json = "json_data" in touched and bool(self.json_data.strip())
        return {
            key: message
            for key, message in self.errors.items()
            if (as_json and key.startswith("/"))  # the JSON typed stands for every input
            or any(t == key or t.startswith(key + "/") or key.startswith(t + "/") for t in touched)
        }

    def labels(self) -> dict[str, str]:
        """Each error place's name, in the current language, for the summary."""
        names = {
            "text": gettext("Text"),
            "to": gettext("To"),
            "precedence": gettext("Precedence"),
            "json_data": gettext("Form data (JSON)"),
            "form": gettext("Form"),
        }
        for node in self.nodes:
            for n in node.walk():
                names[n.pointer] = n.label
        return names

    def summary(self) -> list[tuple[str, str, str]]:
        """(error id, field name, message) of every error placed at a field, in page order."""
        placed = self.placed()
        labels = self.labels()
        order = [k for _, k in self.containers()]
        return [(error_id(k), labels.get(k, k), placed[k]) for k in order if k in placed]

    def placed(self) -> dict[str, str]:
        """Each error at the nearest input that exists; the rest become general errors."""
        known = {k for _, k in self.containers()}
        placed: dict[str, str] = {}
        for key, message in self._shown_errors().items():
            at = key
            while at not in known and at.startswith("/") and at.count("/") > 1:
                at = at.rsplit("/", 1)[0]
            if at in known:
                placed.setdefault(at, message)
            else:
                shown = message if key in ("/", "") else f"{key}: {message}"
                if shown not in self.general:
                    self.general.append(shown)
        return placed


def _active_channels(terminal: Terminal) -> list[dict[str, Any]]:
    return [c for c in terminal.channels() if c["state"] == "active"]


def _strings(form: FormData, key: str) -> list[str]:
    return [v for v in form.getlist(key) if isinstance(v, str)]


def _one(form: FormData, key: str) -> str:
    found = _strings(form, key)
    return found[0] if found else ""


def read_compose(terminal: Terminal, form: FormData, lang: str) -> Composed:
    """Read and check a compose form (in the operator's language ``lang``)."""
    c = Composed(
        text=_one(form, "text").replace("\r\n", "\n"),
        form=_one(form, "form"),
        json_data=_one(form, "json_data"),
        lang=_one(form, "lang") or lang,
        precedence=_one(form, "precedence") or "ROUTINE",
        exercise=_one(form, "exercise") in ("1", "on", "true"),
        to=sorted(set(_strings(form, "to"))),
        channel=_one(form, "channel"),
    )
    if c.lang not in i18n.LANGS:
        c.lang = lang
    version_text = _one(form, "form_version")
    if c.precedence not in PRECEDENCES:
        c.errors["precedence"] = gettext("Choose a precedence.")
    peers = set(terminal.party.peers)
    # Recipients: a channel's members, or the parties ticked.
    if c.channel:
        channel = next((ch for ch in _active_channels(terminal) if ch["name"] == c.channel), None)
        if channel is None:
            c.errors["to"] = gettext("That channel is not active.")
        else:
            c.recipients = sorted(set(channel["members"]) - {terminal.me})
            c.resolved_channel = c.channel
    elif not c.to:
        c.errors["to"] = gettext("Choose at least one recipient or a channel.")
    elif not set(c.to) <= peers:
        c.errors["to"] = gettext("Unknown recipient: %(party)s") % {
            "party": ", ".join(sorted(set(c.to) - peers))
        }
    else:
        c.recipients = c.to
        if len(c.to) > 1:
            members = {*c.to, terminal.me}
            matching = [
                ch["name"] for ch in _active_channels(terminal) if set(ch["members"]) == members
            ]
            if len(matching) == 1:
                c.resolved_channel = matching[0]
            else:
                c.errors["to"] = gettext(
                    "A message to several parties goes on a channel of exactly those parties: "
                    "choose the channel."
                )
    # Content: free text or a form.
    if not c.form:
        if not c.text.strip():
            c.errors["text"] = gettext("Write the message.")
        else:
            c.kind, c.body = "text", {"text": c.text}
        return c
    registry = terminal.forms
    definition = (
        registry.get(c.form, int(version_text))
        if version_text.isdigit()
        else registry.latest(c.form)
    )
    if definition is None:
        c.errors["form"] = gettext("Unknown form.")
        return c
    c.version = definition.version
    values = {k: _strings(form, k) for k in form if k.startswith("/")}
    c.nodes = form_nodes(registry, definition.name, definition.version, lang, values)
    collected = collect_form_data(c.nodes)
    data: Any = collected.data
    kept = collected.kept
    if c.json_data.strip():  # the data as JSON replaces the inputs
        kept = {}
        try:
            data = parse_json(c.json_data)
        except (ValueError, RecursionError) as exc:
            c.errors["json_data"] = gettext("Not valid JSON: %(problem)s") % {
                "problem": str(exc)[:200]
            }
            return c
        if not isinstance(data, dict):
            c.errors["json_data"] = gettext("The data must be a JSON object.")
            return c
    else:
        c.errors.update(collected.errors)
    for pointer, message in validate_form_data(
        registry, definition.name, definition.version, data, kept
    ).items():
        c.errors.setdefault(pointer, message)
    if c.errors:
        return c
    try:  # the registry's own check, exactly as the receiver will make it
        c.kind, c.body = build_body(None, definition.name, data, definition.version)
        registry.check_rules(definition, data, terminal.clock())
    except InvalidFormData as exc:
        found = re.search(r": (/[^:]*): ", str(exc))
        c.errors[found[1] if found else "/"] = str(exc)
    except UsageError as exc:  # a notice given too late
        c.refused(exc, lang)
    return c


def _form_choices(registry: FormRegistry, lang: str) -> list[tuple[str, str]]:
    latest: dict[str, FormDefinition] = {}
    for definition in registry:
        latest[definition.name] = definition
    return sorted(
        ((d.name, str(d.title.get(lang) or d.title.get("en") or d.name)) for d in latest.values()),
        key=lambda choice: choice[1].casefold(),
    )


def _compose_context(page: Page, composed: Composed) -> dict[str, Any]:
    terminal = page.terminal
    return {
        "active": "compose",
        "c": composed,
        "placed": composed.placed(),
        "error_id": error_id,
        "forms": _form_choices(terminal.forms, page.lang),
        "peers": sorted(terminal.party.peers),
        "channels": _active_channels(terminal),
        "precedences": [(p, gettext(PRECEDENCE_HELP[p])) for p in PRECEDENCES],
        "langs_text": i18n.LANG_NAMES,
    }


async def _render_compose(
    page: Page, template: str, composed: Composed, status: int = 200
) -> Response:
    def context_in_lang() -> dict[str, Any]:
        restore = i18n.use(page.lang)
        try:
            return _compose_context(page, composed)
        finally:
            restore()

    context = await run_in_threadpool(context_in_lang)  # reads the channels
    response = render(page, page.request, template, **context)
    response.status_code = status
    return response


# --------------------------------------------------------------------------
# Machine translation (replaceable in tests)

translator_factory: Callable[[Config], Translator | None] = translator_for


def _machine_translation(
    config: Config, text: str, source: str, target: str
) -> MachineTranslation | str | None:
    """A machine translation, the reason there is none, or None when none is needed."""
    try:
        return machine_translate(translator_factory(config), text, source, target)
    except TranslatorUnavailable as exc:
        return str(exc)
    except Exception as exc:  # a reading aid must never break the page
        log.warning("machine_translation_failed", error=str(exc))
        return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------
# Pages


@router.get("/inbox", response_class=HTMLResponse)
async def inbox(page: CurrentPage) -> HTMLResponse:
    rows = await run_in_threadpool(inbox_rows, page.terminal, page.lang)
    return render(page, page.request, "inbox.html", active="inbox", rows=rows)


@router.get("/fragments/inbox", response_class=HTMLResponse)
async def inbox_fragment(page: CurrentPage) -> HTMLResponse:
    rows = await run_in_threadpool(inbox_rows, page.terminal, page.lang)
    return render(page, page.request, "fragments/inbox_rows.html", rows=rows)


def _outbox(ops: Operations, lang: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return held_rows(ops, lang), outbox_rows(ops.terminal, lang)


@router.get("/outbox", response_class=HTMLResponse)
async def outbox(page: CurrentPage) -> HTMLResponse:
    held, rows = await run_in_threadpool(_outbox, page.ops, page.lang)
    return render(page, page.request, "outbox.html", active="outbox", rows=rows, held=held)


@router.get("/fragments/outbox", response_class=HTMLResponse)
async def outbox_fragment(page: CurrentPage) -> HTMLResponse:
    held, rows = await run_in_threadpool(_outbox, page.ops, page.lang)
    return render(page, page.request, "fragments/outbox_rows.html", rows=rows, held=held)


@router.get("/fragments/flash", response_class=HTMLResponse)
async def flash_fragment(page: CurrentPage) -> HTMLResponse:
    alerts = await run_in_threadpool(flash_alerts, page.terminal, page.lang)
    return render(page, page.request, "fragments/flash.html", alerts=alerts)


def _nested(fields: Sequence[RenderedField]) -> list[tuple[RenderedField, list[Any]]]:
    """A rendered form's flat fields as a tree: each heading with the fields under it."""
    result: list[tuple[RenderedField, list[Any]]] = []
    i = 0
    while i < len(fields):
        head = fields[i]
        j = i + 1
        while j < len(fields) and fields[j].depth > head.depth:
            j += 1
        result.append((head, _nested(fields[i + 1 : j])))
        i = j
    return result


def _message_view(terminal: Terminal, envelope_id: str, lang: str) -> dict[str, Any] | None:
    try:
        message = terminal.show(envelope_id)
    except UsageError:
        return None
    view: dict[str, Any] = {"m": message, "rendered": None, "render_problem": None}
    if not message["verified"]:
        return view  # shown as not verifying: nothing the row claims
    body = message["body"]
    view["signed_json"] = canonical_bytes(body).decode()
    view["summary"] = summary(terminal.forms, message["kind"], body, lang)
    view["notices"] = service_words(body, lang) if message["kind"] == "service" else []
    if message["kind"] == "form" and isinstance(body.get("form"), dict):
        form = body["form"]
        try:
            rendered = render_form(
                terminal.forms, str(form.get("name")), form.get("version"), form["data"], lang
            )
            view["rendered"] = rendered
            view["tree"] = _nested(rendered.fields)
        except (ParleyError, KeyError, TypeError) as exc:
            view["render_problem"] = str(exc)
    view["machine"] = None
    view["machine_problem"] = None
    if message["kind"] == "text" and message["direction"] == "in":
        translated = _machine_translation(
            terminal.config, str(body.get("text", "")), message["lang"], lang
        )
        if isinstance(translated, str):
            view["machine_problem"] = translated
        else:
            view["machine"] = translated
    if message["direction"] == "out":
        view["states"] = recipient_states(
            message["recipients"],
            message["receipts"],
            message["acks"],
            message["rejections"],
            message["delivery"],
            needs_ack=message["needs_ack"],
        )
    view["evidence"] = message_evidence(terminal, envelope_id)
    return view


@router.get("/messages/{envelope_id}", response_class=HTMLResponse)
async def message_page(page: CurrentPage, envelope_id: str) -> HTMLResponse:
    view = await run_in_threadpool(_message_view, page.terminal, envelope_id[:64], page.lang)
    if view is None:
        return not_found_page(page, "no_message", f"no message {envelope_id[:64]} on this terminal")
    m_ = view["m"]
    if not m_["verified"]:
        return render(page, page.request, "unverified.html", m=m_)
    return render(
        page,
        page.request,
        "message.html",
        active="inbox" if m_["direction"] == "in" else "outbox",
        can_ack=_can_ack(page, m_),
        seen=status_key(view),
        when=when,
        precedence_help=PRECEDENCE_HELP,
        **view,
    )


def _can_ack(page: Page, message: Mapping[str, Any]) -> bool:
    return (
        page.may("acknowledge")
        and message["direction"] == "in"
        and message["needs_ack"]
        and message["acknowledged_at"] is None
    )


def _status_view(terminal: Terminal, envelope_id: str) -> dict[str, Any] | None:
    """What the message page shows of a message's receipts and acknowledgements."""
    try:
        message = terminal.show(envelope_id)
    except UsageError:
        return None
    if not message["verified"]:
        return None
    view: dict[str, Any] = {"m": message}
    if message["direction"] == "out":
        view["states"] = recipient_states(
            message["recipients"],
            message["receipts"],
            message["acks"],
            message["rejections"],
            message["delivery"],
            needs_ack=message["needs_ack"],
        )
    return view


def status_key(view: Mapping[str, Any]) -> str:
    """A digest of a message's receipts and acknowledgements as its page shows them."""
    message = view["m"]
    facts: list[Any] = [message.get("acknowledged_at"), message.get("acknowledged_by")]
    if message["direction"] == "out":
        facts = [[str(getattr(s, f)) for f in RecipientState.__slots__] for s in view["states"]]
    return hashlib.sha256(json.dumps(facts, default=str).encode()).hexdigest()[:16]


@router.get("/fragments/messages/{envelope_id}/status", response_model=None)
async def message_status(page: CurrentPage, envelope_id: str, seen: str = "") -> Response:
    """The receipts and acknowledgements of a message, for its page's poll: 204 (nothing
    to swap) while they are as the page last saw them (``seen``)."""
    view = await run_in_threadpool(_status_view, page.terminal, envelope_id[:64])
    if view is None:
        return Response(status_code=204)
    key = status_key(view)
    if key == seen:
        return Response(status_code=204)
    return render(
        page,
        page.request,
        "fragments/message_status.html",
        can_ack=_can_ack(page, view["m"]),
        seen=key,
        oob=True,
        when=when,
        **view,
    )


@router.post("/messages/{envelope_id}/ack")
async def acknowledge(page: CurrentPage, envelope_id: str) -> RedirectResponse:
    page.require("acknowledge")
    await run_in_threadpool(page.ops.acknowledge, envelope_id)
    return RedirectResponse(f"/messages/{envelope_id}", status_code=303)


# Compose ----------------------------------------------------------------------------


@router.get("/compose", response_class=HTMLResponse)
async def compose_page(page: CurrentPage) -> Response:
    page.require("compose")
    return await _render_compose(page, "compose.html", Composed(lang=page.lang))


async def _form_fields(page: Page, name: str, add_item: str | None) -> Response:
    page.require("compose")
    composed = Composed(lang=page.lang)
    definition = page.terminal.forms.latest(name) if name else None
    if definition is not None:
        values: dict[str, list[str]] = {}
        if page.request.method == "POST":
            form = await page.request.form()
            values = {k: _strings(form, k) for k in form if k.startswith("/")}
            composed.json_data = _one(form, "json_data")
        composed.form, composed.version = definition.name, definition.version
        composed.nodes = form_nodes(
            page.terminal.forms,
            definition.name,
            definition.version,
            page.lang,
            values,
            add_item,
        )
    return await _render_compose(page, "fragments/compose_fields.html", composed)


@router.get("/compose/form-fields", response_class=HTMLResponse)
async def form_fields(page: CurrentPage, name: str = "", form: str = "") -> Response:
    return await _form_fields(page, name or form, None)


@router.post("/compose/form-fields", response_class=HTMLResponse)
async def form_fields_grown(
    page: CurrentPage,
    form: Annotated[str, Form()] = "",
    add_item: Annotated[str, Form()] = "",
) -> Response:
    return await _form_fields(page, form, add_item or None)


def _checked(page: Page, form: FormData) -> Composed:
    restore = i18n.use(page.lang)
    try:
        return read_compose(page.terminal, form, page.lang)
    finally:
        restore()


@router.post("/compose/validate", response_class=HTMLResponse)
async def compose_validate(page: CurrentPage) -> Response:
    page.require("compose")
    form = await page.request.form()
    composed = await run_in_threadpool(_checked, page, form)  # reads the channels
    composed.shown = set(_strings(form, "_shown"))
    touched = set(_strings(form, "_touched"))
    composed.touched = None if "*" in touched else touched  # "*": a send was refused
    return await _render_compose(page, "fragments/compose_errors.html", composed)


@router.post("/compose", response_model=None)
async def compose_send(page: CurrentPage) -> Response:
    page.require("compose")
    form = await page.request.form()
    composed = await run_in_threadpool(_checked, page, form)  # reads the channels
    if composed.errors or composed.general:
        return await _render_compose(page, "compose.html", composed)
    ops = page.ops
    try:
        result = await run_in_threadpool(
            lambda: ops.send(
                composed.recipients,
                kind=composed.kind,
                body=composed.body,
                channel=composed.resolved_channel,
                precedence=composed.precedence,
                exercise=composed.exercise,
                lang=composed.lang,
            )
        )
    except NotPermitted:
        raise
    except ParleyError as exc:
        composed.refused(exc, page.lang)
        return await _render_compose(page, "compose.html", composed)
    if "held" in result:  # a duty officer's FLASH waits for a supervisor
        return RedirectResponse("/outbox", status_code=303)
    return RedirectResponse(f"/messages/{result['id']}", status_code=303)


# Held FLASH -------------------------------------------------------------------------


@router.post("/outbox/held/{held_id}/release")
async def release(page: CurrentPage, held_id: int) -> RedirectResponse:
    page.require("release_flash")
    await run_in_threadpool(page.ops.release, held_id)
    return RedirectResponse("/outbox", status_code=303)


@router.post("/outbox/held/{held_id}/cancel")
async def cancel(page: CurrentPage, held_id: int) -> RedirectResponse:
    """Withdraw a held FLASH: its author or a supervisor (the policy decides)."""
    await run_in_threadpool(page.ops.reject, held_id)
    return RedirectResponse("/outbox", status_code=303)
