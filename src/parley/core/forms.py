"""Formatted notifications: the form registry and the checks on form data.

A form is agreed, language-free data (see ``docs/forms.md``). A definition is
a JSON Schema (2020-12) with labels and help in English, Russian and
Ukrainian as ``x-`` annotations, plus rules JSON Schema cannot express (so
far only ``min_notice``). The registry is built from parsed definitions; the
files themselves are read at the edge (``parley.forms``).

The envelope body of a form is ``{"form": {"name", "version", "definition",
"data"}}``, where ``definition`` is the digest of what the definition means
(schema, rules and the shared definitions it uses, without labels). The
receiver refuses data whose definition it does not know or knows otherwise.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import referencing
import referencing.jsonschema
from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.exceptions import SchemaError, ValidationError, best_match
from referencing.exceptions import Unresolvable

from parley.core.canonical import canonical_bytes
from parley.errors import ParleyError, SchemaViolation, UsageError

__all__ = [
    "COMMON_ID",
    "LANGS",
    "FormDefinition",
    "FormRegistry",
    "FormRejected",
    "InvalidDefinition",
    "InvalidFormData",
    "NoticeTooShort",
    "lint_definition",
]

COMMON_ID: Final = "urn:parley:form:common"
LANGS: Final = ("en", "ru", "uk")
REJECTION_CODES: Final = ("unknown_form", "definition_mismatch", "invalid_form", "malformed_form")
RULES: Final = ("min_notice",)
_NAME = re.compile(r"^[A-Z][A-Z0-9_]{1,63}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_DRAFT: Final = "https://json-schema.org/draft/2020-12/schema"
MAX_REASON: Final = 500
#: The deepest nesting of form data (the envelope's body allows 32, and the form sits 3 down).
MAX_DATA_DEPTH: Final = 28
_DATE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z")

FORMATS = FormatChecker()
"""The format checks applied to form data: jsonschema's own, with ``date-time``
made strict (RFC 3339 in UTC, ``Z``). jsonschema checks ``date-time`` only
when an optional package is installed; a form's times must not depend on that."""


@FORMATS.checks("date-time", raises=ValueError)
def _is_utc_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not _DATE_TIME.fullmatch(value):
        return False
    datetime.fromisoformat(value[:-1])  # a real calendar date and time, or ValueError
    return True


class FormRejected(SchemaViolation):
    """Form data that a terminal refuses; ``code`` is one of ``REJECTION_CODES``."""

    def __init__(self, code: str, reason: str) -> None:
        reason = reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 1] + "…"
        super().__init__(reason)
        self._code = code
        self.reason = reason

    @property
    def code(self) -> str:
        return self._code


class InvalidDefinition(ParleyError):
    """A form definition shipped with (or added to) the terminal is broken."""


class InvalidFormData(UsageError):
    """Form data this terminal's own operator asked it to send, and it refuses."""

    def __init__(self, rejection: str, message: str) -> None:
        super().__init__(message)
        self.rejection = rejection


class NoticeTooShort(UsageError):
    """A notice the sender's terminal refuses: too little time ahead and not marked late."""


@dataclass(frozen=True, slots=True)
class FormDefinition:
    name: str
    version: int
    title: Mapping[str, str]
    help: Mapping[str, str]
    schema: Mapping[str, Any]
    rules: tuple[Mapping[str, Any], ...]
    digest: str


def _strip_annotations(value: Any) -> Any:
    """The schema without ``x-`` keywords (labels and help change no meaning)."""
    if isinstance(value, dict):
        return {
            k: _strip_annotations(v)
            for k, v in value.items()
            if not (isinstance(k, str) and k.startswith("x-"))
        }
    if isinstance(value, list):
        return [_strip_annotations(v) for v in value]
    return value


def _refs(value: Any) -> Iterator[str]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str):
                yield ref
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _common_name(ref: str) -> str | None:
    prefix = COMMON_ID + "#/$defs/"
    return ref[len(prefix) :] if ref.startswith(prefix) else None


def _used_common(schema: Mapping[str, Any], common: Mapping[str, Any]) -> dict[str, Any]:
    """The shared definitions a schema refers to, directly or through others."""
    defs = common.get("$defs", {})
    used: dict[str, Any] = {}
    # (ref, found inside the shared definitions): there "#/$defs/x" is theirs too.
    pending = [(ref, False) for ref in _refs(schema)]
    while pending:
        ref, inside = pending.pop()
        name = _common_name(ref)
        if name is None and inside and ref.startswith("#/$defs/"):
            name = ref[len("#/$defs/") :]
        if name is None or name in used or name not in defs:
            continue
        used[name] = defs[name]
        pending.extend((r, True) for r in _refs(defs[name]))
    return used


def definition_digest(raw: Mapping[str, Any], common: Mapping[str, Any]) -> str:
    meaning = {
        "common": _strip_annotations(_used_common(raw["schema"], common)),
        "name": raw["name"],
        "rules": raw.get("rules", []),
        "schema": _strip_annotations(raw["schema"]),
        "version": raw["version"],
    }
    return hashlib.sha256(canonical_bytes(meaning)).hexdigest()


def _langs_problem(value: Any, where: str, what: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{where} lacks {what} in {', '.join(LANGS)}"]
    return [
        f"{where} lacks {what} in {lang}"
        for lang in LANGS
        if not isinstance(value.get(lang), str) or not value[lang].strip()
    ]


def _lint_schema(schema: Any, where: str, labelled: bool) -> list[str]:
    """Labels for every property, ``oneOf`` branch and enum value, recursively."""
    problems: list[str] = []
    if not isinstance(schema, dict):
        return problems
    kinds = schema.get("type")
    if kinds == "number" or (isinstance(kinds, list) and "number" in kinds):
        problems.append(
            f"{where}: 'type: number' cannot be signed (Parley's canonical JSON has no "
            "floats): use 'integer', or a decimal string with a 'pattern' (docs/forms.md, "
            'Numbers), e.g. a latitude "48.5123"'
        )
    if labelled:
        problems += _langs_problem(schema.get("x-label"), where, "a label (x-label)")
        problems += _langs_problem(schema.get("x-help"), where, "help (x-help)")
    if "enum" in schema:
        labels = schema.get("x-enum")
        for value in schema["enum"]:
            entry = labels.get(str(value)) if isinstance(labels, dict) else None
            problems += _langs_problem(entry, f"{where} value {value!r}", "a label (x-enum)")
    for name, sub in (schema.get("properties") or {}).items():
        problems += _lint_schema(sub, f"{where}/{name}", True)
    for i, branch in enumerate(schema.get("oneOf") or []):
        problems += _lint_schema(branch, f"{where}/oneOf/{i}", True)
    for key in ("items", "anyOf", "allOf"):
        sub = schema.get(key)
        if isinstance(sub, dict):
            problems += _lint_schema(sub, f"{where}/{key}", False)
        elif isinstance(sub, list):
            for i, item in enumerate(sub):
                problems += _lint_schema(item, f"{where}/{key}/{i}", False)
    for name, sub in (schema.get("$defs") or {}).items():
        problems += _lint_schema(sub, f"{where}/$defs/{name}", False)
    return problems


def _schema_at(
    schema: Mapping[str, Any], pointer: str, common: Mapping[str, Any]
) -> Mapping[str, Any] | None:
    """The schema of the data at a JSON Pointer (through properties and shared refs)."""
    defs = common.get("$defs", {})
    current: Any = schema
    for token in pointer.lstrip("/").split("/") if pointer else []:
        for _ in range(16):  # follow $ref to the shared definitions
            name = _common_name(current.get("$ref", "")) if isinstance(current, dict) else None
            if name is None or name not in defs:
                break
            current = {**defs[name], **{k: v for k, v in current.items() if k != "$ref"}}
        properties = current.get("properties") if isinstance(current, dict) else None
        if not isinstance(properties, dict) or token not in properties:
            return None
        current = properties[token]
    if isinstance(current, dict) and "$ref" in current:
        name = _common_name(current["$ref"])
        if name is not None and name in defs:
            current = {**defs[name], **current}
    return current if isinstance(current, dict) else None


def _lint_rules(
    rules: Any, name: str, schema: Mapping[str, Any], common: Mapping[str, Any]
) -> list[str]:
    if not isinstance(rules, list):
        return [f"{name}: 'rules' must be a list"]
    problems = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict) or rule.get("rule") not in RULES:
            problems.append(f"{name}: rule {i} is not one of {', '.join(RULES)}")
            continue
        hours, time, unless = rule.get("hours"), rule.get("time"), rule.get("unless")
        if not isinstance(time, str) or type(hours) is not int or hours < 0:
            problems.append(f"{name}: min_notice rule {i} needs 'time' (a pointer) and 'hours'")
            continue
        target = _schema_at(schema, time, common)
        if target is None or target.get("format") != "date-time":
            problems.append(
                f"{name}: min_notice rule {i}: 'time' {time} names no date-time field of the form"
            )
        if "unless" in rule and (
            not isinstance(unless, str) or _schema_at(schema, unless, common) is None
        ):
            problems.append(
                f"{name}: min_notice rule {i}: 'unless' {unless!r} names no field of the form"
            )
        extra = set(rule) - {"rule", "time", "hours", "unless"}
        if extra:
            problems.append(f"{name}: min_notice rule {i} has unknown keys {sorted(extra)}")
    return problems


def _lint_enum_labels(schema: Any, where: str) -> list[str]:
    """``x-enum`` keys that name no value of the enum (a typo hides a missing label)."""
    problems: list[str] = []
    stack: list[tuple[Any, str]] = [(schema, where)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, dict):
            labels = item.get("x-enum")
            if isinstance(labels, dict) and "enum" in item:
                stray = set(labels) - {str(v) for v in item["enum"]}
                if stray:
                    problems.append(f"{at}: x-enum labels {sorted(stray)} match no enum value")
            stack.extend((v, f"{at}/{k}") for k, v in item.items() if not str(k).startswith("x-"))
        elif isinstance(item, list):
            stack.extend((v, f"{at}/{i}") for i, v in enumerate(item))
    return problems


def _lint_json(raw: Any, where: str) -> list[str]:
    """Definitions are signed data too: no floats, no unsafe integers."""
    try:
        canonical_bytes(raw)
    except ParleyError as exc:
        return [f"{where}: {exc}"]
    return []


def lint_definition(raw: Mapping[str, Any], common: Mapping[str, Any]) -> list[str]:
    """Every problem with a definition: shape, schema validity, missing labels."""
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        return [f"definition name {name!r} is not an upper-case form name"]
    version = raw.get("version")
    if type(version) is not int or version < 1:
        return [f"{name}: version must be a positive integer"]
    where = f"{name} v{version}"
    problems = _langs_problem(raw.get("title"), where, "a title")
    problems += _langs_problem(raw.get("help"), where, "help")
    schema = raw.get("schema")
    if not isinstance(schema, dict):
        return [*problems, f"{where}: 'schema' must be an object"]
    if schema.get("$schema") != _DRAFT:
        problems.append(f"{where}: the schema must declare JSON Schema 2020-12")
    if schema.get("type") != "object":
        problems.append(f"{where}: the schema must describe an object")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        # Nothing more can be checked in a schema of the wrong shape.
        return [*problems, f"{where}: not a valid JSON Schema: {exc.message}"]
    problems += _lint_schema(schema, where, False)
    problems += _lint_enum_labels(schema, where)
    problems += _lint_json(dict(raw), where)
    problems += _lint_rules(raw.get("rules", []), where, schema, common)
    extra = set(raw) - {"name", "version", "title", "help", "schema", "rules"}
    if extra:
        problems.append(f"{where}: unexpected field(s) {', '.join(sorted(extra))}")
    for ref in _refs(schema):
        common_name = _common_name(ref)
        if not ref.startswith("#") and (
            common_name is None or common_name not in common.get("$defs", {})
        ):
            problems.append(f"{where}: $ref {ref} names no shared definition")
    return problems


def _shown(text: str) -> str:
    """A string from the other side: as it is if it is a plain name or digest, else
    shortened and with every unusual character escaped."""
    if _NAME.fullmatch(text) or _DIGEST.fullmatch(text):
        return text
    return repr(text[:64])[:200]


def _shown_int(value: int) -> str:
    return str(value) if abs(value) < 10**18 else "(a number of over 18 digits)"


def _unsignable(data: Any) -> str | None:
    """Why data cannot be signed as canonical JSON (too deep, a float, a huge integer,
    a lone surrogate), checked before the schema so that no check sees such a value."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DATA_DEPTH:
            return f"/: the data nests more than {MAX_DATA_DEPTH} levels deep"
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    try:
        canonical_bytes(data)
    except ParleyError as exc:
        return f"/: the data cannot be signed: {exc}"
    except (ValueError, UnicodeError):  # rfc8785's refusal of a lone surrogate
        return "/: the data cannot be signed: it holds text that is not valid Unicode"
    return None


@functools.cache
def _ecma_pattern(pattern: str) -> re.Pattern[str]:
    """A JSON Schema (ECMA-262) pattern for Python: a final ``$`` is the end of the string
    (Python's ``$`` would also match before a final newline)."""
    return re.compile(re.sub(r"(?<!\\)\$(?=\)*$)", r"\\Z", pattern))


def _pattern_keyword(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not _ecma_pattern(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator, {"pattern": _pattern_keyword}
)


def _pointer(path: Iterable[Any]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _resolve_pointer(data: Any, pointer: str) -> tuple[bool, Any]:
    """(found, value) at a JSON Pointer."""
    if pointer == "":
        return True, data
    current = data
    for token in pointer.lstrip("/").split("/"):
        key = token.replace("~1", "/").replace("~0", "~")
        if isinstance(current, dict) and key in current:
            current = current[key]
        elif isinstance(current, list) and key.isdigit() and int(key) < len(current):
            current = current[int(key)]
        else:
            return False, None
    return True, current


class FormRegistry:
    """Known form definitions by name and version, with their validators."""

    def __init__(self, definitions: Iterable[Mapping[str, Any]], common: Mapping[str, Any]) -> None:
        common = dict(common)
        common.setdefault("$id", COMMON_ID)
        if common["$id"] != COMMON_ID:
            raise InvalidDefinition(f"the shared definitions must have $id {COMMON_ID}")
        common.setdefault("$schema", _DRAFT)
        try:
            Draft202012Validator.check_schema(common)
        except SchemaError as exc:
            raise InvalidDefinition(f"common: not a valid JSON Schema: {exc.message}") from None
        problems = _lint_schema(common, "common", False)
        problems += _lint_enum_labels(common, "common")
        problems += _lint_json(common, "common")
        if problems:
            raise InvalidDefinition("broken shared form definitions:\n  " + "\n  ".join(problems))
        resource = referencing.Resource.from_contents(
            common, default_specification=referencing.jsonschema.DRAFT202012
        )
        self._refs: referencing.Registry[Any] = referencing.Registry().with_resource(
            COMMON_ID, resource
        )
        self._common = common
        self._forms: dict[tuple[str, int], FormDefinition] = {}
        self._validators: dict[tuple[str, int], Any] = {}
        for raw in definitions:
            found = lint_definition(raw, common)
            if found:
                problems += found
                continue
            key = (raw["name"], raw["version"])
            if key in self._forms:
                problems.append(f"{key[0]} v{key[1]} is defined twice")
                continue
            self._forms[key] = FormDefinition(
                name=raw["name"],
                version=raw["version"],
                title=dict(raw["title"]),
                help=dict(raw["help"]),
                schema=raw["schema"],
                rules=tuple(raw.get("rules", [])),
                digest=definition_digest(raw, common),
            )
            self._validators[key] = self._validator(raw["schema"])
        if problems:
            raise InvalidDefinition("broken form definitions:\n  " + "\n  ".join(problems))
        for key, validator in self._validators.items():
            try:  # every $ref resolves now, not at the first message that uses it
                for ref in _refs(validator.schema):
                    if not ref.startswith("#"):
                        self._refs.resolver().lookup(ref)
            except Unresolvable as exc:
                raise InvalidDefinition(f"{key[0]} v{key[1]}: cannot resolve {exc}") from None

    def _validator(self, schema: Mapping[str, Any]) -> Any:
        return _Validator(schema, registry=self._refs, format_checker=FORMATS)

    # Lookup -----------------------------------------------------------------

    def get(self, name: str, version: int) -> FormDefinition | None:
        return self._forms.get((name, version))

    def latest(self, name: str) -> FormDefinition | None:
        versions = [d for (n, _), d in self._forms.items() if n == name]
        return max(versions, key=lambda d: d.version) if versions else None

    def __iter__(self) -> Iterator[FormDefinition]:
        return iter(sorted(self._forms.values(), key=lambda d: (d.name, d.version)))

    def __len__(self) -> int:
        return len(self._forms)

    @property
    def common(self) -> Mapping[str, Any]:
        return self._common

    def resolve(self, ref: str) -> Mapping[str, Any]:
        """The schema a ``$ref`` to the shared definitions points to."""
        try:
            contents = self._refs.resolver().lookup(ref).contents
        except Unresolvable as exc:
            raise UsageError(f"cannot resolve {ref}: {exc}") from None
        if not isinstance(contents, dict):
            raise UsageError(f"{ref} is not a schema")
        return contents

    def matches(self, schema: Mapping[str, Any], value: Any) -> bool:
        """Whether ``value`` is valid under a fragment of some definition."""
        return bool(self._validator(schema).is_valid(value))

    # Checking ---------------------------------------------------------------

    def _errors(self, key: tuple[str, int], data: Any) -> str | None:
        error = best_match(self._validators[key].iter_errors(data))
        if error is None:
            return None
        where = _pointer(error.absolute_path) or "/"
        message = error.message
        if isinstance(error.instance, (dict, list)):  # the pointer names it; no need to repeat it
            message = message.replace(repr(error.instance), "the value", 1)
        if error.validator == "pattern" and isinstance(error.schema, dict):
            # The regular expression says little to an operator; the field's help says more.
            hint = error.schema.get("x-help", {}).get("en")
            message = f"{error.instance!r} is not in the required form" + (
                f" ({hint})" if isinstance(hint, str) else f" (pattern {error.validator_value})"
            )
        return f"{where}: {message}"[:MAX_REASON]

    def check(self, form: Any) -> FormDefinition:
        """Check a received (or about to be sent) form body; raise ``FormRejected``."""
        if not isinstance(form, dict) or set(form) != {"name", "version", "definition", "data"}:
            raise FormRejected(
                "malformed_form", "a form must hold exactly name, version, definition and data"
            )
        name, version, digest = form["name"], form["version"], form["definition"]
        if not isinstance(name, str) or type(version) is not int or not isinstance(digest, str):
            raise FormRejected(
                "malformed_form",
                "a form's name and definition must be strings and its version an integer",
            )
        definition = self._forms.get((name, version))
        if definition is None:
            known = sorted(v for (n, v) in self._forms if n == name)
            raise FormRejected(
                "unknown_form",
                f"form {_shown(name)} version {_shown_int(version)} is not known here"
                + (f" (known versions: {', '.join(map(str, known))})" if known else ""),
            )
        if digest != definition.digest:
            raise FormRejected(
                "definition_mismatch",
                f"form {name} v{version} has definition {_shown(digest)} on the sender's side "
                f"and {definition.digest} here: the two terminals' definitions differ",
            )
        data = form["data"]
        if not isinstance(data, dict):
            raise FormRejected("invalid_form", f"{name} v{version}: /: the data must be an object")
        unsignable = _unsignable(data)
        if unsignable is not None:
            raise FormRejected("invalid_form", f"{name} v{version}: {unsignable}")
        # Checked as signed (keys in canonical order), so the sender's terminal and the
        # receiver's give the same first error in the same words.
        problem = self._errors((name, version), json.loads(canonical_bytes(data)))
        if problem is not None:
            raise FormRejected("invalid_form", f"{name} v{version}: {problem}")
        return definition

    def body(self, name: str, data: Any, version: int | None = None) -> dict[str, Any]:
        """The form body to send: validated here first, as the receiver will."""
        definition = self.latest(name) if version is None else self.get(name, version)
        if definition is None:
            raise FormRejected(
                "unknown_form",
                f"no form {name}"
                + ("" if version is None else f" version {version}")
                + f"; known forms: {', '.join(sorted({d.name for d in self}))}",
            )
        form = {
            "name": definition.name,
            "version": definition.version,
            "definition": definition.digest,
            "data": data,
        }
        self.check(form)
        return form

    def check_rules(
        self, definition: FormDefinition, data: Mapping[str, Any], now: datetime
    ) -> None:
        """The sender's rules (``min_notice``); raise ``NoticeTooShort``."""
        for rule in definition.rules:
            if rule["rule"] != "min_notice":
                continue
            if "unless" in rule and _resolve_pointer(data, rule["unless"])[0]:
                continue
            found, value = _resolve_pointer(data, rule["time"])
            if not found or not isinstance(value, str):
                continue  # the schema decides whether the time is required
            try:
                when = datetime.fromisoformat(value)
            except ValueError:
                continue  # the schema's date-time format check reports it
            if when.tzinfo is None:
                continue
            ahead = when - now
            if ahead < timedelta(hours=rule["hours"]):
                hours = ahead.total_seconds() / 3600
                raise NoticeTooShort(
                    f"{definition.name} needs {rule['hours']} hours' notice: {rule['time']} is "
                    f"{hours:.1f} hours from now; mark it as a late notice "
                    f"({rule.get('unless', '')}) with a reason to send it anyway",
                    hours=str(rule["hours"]),
                    ahead=f"{hours:.1f}",
                )
