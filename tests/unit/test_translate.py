"""Translations: machine translation through a stand-in for Argos Translate,
and certified translations signed and countersigned by operators.

The real Argos package is not installed (and must not be downloaded for
tests): a fake ``argostranslate.translate`` module with fake installed
languages shows how the adapter uses it.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from parley.core.canonical import canonical_bytes
from parley.core.dsse import sign_dsse
from parley.core.encoding import format_time
from parley.core.envelope import envelope_digest
from parley.core.identity import Identity, IdentityCard
from parley.core.translation import (
    CERTIFIED_TRANSLATION_TYPE,
    COUNTERSIGNATURE_TYPE,
    CertifiedTranslation,
    certify_translation,
    countersign_translation,
    read_certified_translation,
    read_countersignature,
    same_operator,
)
from parley.errors import (
    InvalidSignature,
    SchemaViolation,
    UnknownSender,
    UnknownVersion,
    UsageError,
    VerificationError,
)
from parley.forms.translate import (
    ArgosTranslator,
    MachineTranslation,
    Translator,
    TranslatorUnavailable,
    configured_translator,
    machine_translate,
)
from parley.testing import PartyPair

CardLookup = Callable[[str], IdentityCard | None]


@dataclass
class FakeTranslation:
    """One installed model: marks the text with its direction."""

    source: str
    target: str
    calls: list[str] = field(default_factory=list)

    def translate(self, text: str) -> str:
        self.calls.append(text)
        return f"[{self.source}>{self.target}] {text}"


@dataclass
class FakeLanguage:
    code: str
    name: str
    models: dict[str, FakeTranslation] = field(default_factory=dict)

    def get_translation(self, to: FakeLanguage) -> FakeTranslation | None:
        return self.models.get(to.code)


def fake_argos(*pairs: tuple[str, str]) -> types.SimpleNamespace:
    """A stand-in for ``argostranslate.translate`` with models for ``pairs``."""
    names = {"en": "English", "ru": "Russian", "uk": "Ukrainian"}
    languages = {code: FakeLanguage(code, names[code]) for pair in pairs for code in pair}
    for source, target in pairs:
        languages[source].models[target] = FakeTranslation(source, target)
    return types.SimpleNamespace(get_installed_languages=lambda: list(languages.values()))


def test_a_direct_model_translates() -> None:
    translator = ArgosTranslator(fake_argos(("ru", "en"), ("en", "ru")))
    assert translator.name == "argos"
    assert translator.translate("Два судна", "ru", "en") == "[ru>en] Два судна"
    assert translator.translate("Two ships", "en", "ru") == "[en>ru] Two ships"
    assert translator.translate("Два судна", "ru-RU", "EN") == "[ru>en] Два судна"


def test_russian_to_ukrainian_goes_through_english() -> None:
    translator = ArgosTranslator(fake_argos(("ru", "en"), ("en", "uk")))
    assert translator.translate("Курс 270", "ru", "uk") == "[en>uk] [ru>en] Курс 270"


def test_a_direct_model_is_preferred_to_the_pivot() -> None:
    module = fake_argos(("ru", "en"), ("en", "uk"), ("ru", "uk"))
    assert ArgosTranslator(module).translate("Курс", "ru", "uk") == "[ru>uk] Курс"


@pytest.mark.parametrize(
    ("pairs", "source", "target", "says"),
    [
        ((("en", "ru"),), "ru", "en", "ru→en installed (argospm install translate-ru_en)"),
        ((("ru", "en"),), "ru", "uk", "ru→uk installed (argospm install translate-ru_uk, or "),
        ((("ru", "en"),), "ru", "uk", "translate-ru_en and translate-en_uk"),
        ((), "uk", "en", "installed languages: none"),
    ],
)
def test_a_missing_pair_is_named(
    pairs: tuple[tuple[str, str], ...], source: str, target: str, says: str
) -> None:
    translator = ArgosTranslator(fake_argos(*pairs))
    with pytest.raises(TranslatorUnavailable, match="no Argos language model") as caught:
        translator.translate("текст", source, target)
    assert says in str(caught.value)


def test_the_same_language_needs_no_model() -> None:
    assert ArgosTranslator(fake_argos()).translate("як є", "uk", "uk") == "як є"


def test_machine_translate_labels_the_result() -> None:
    translator = ArgosTranslator(fake_argos(("uk", "en")))
    result = machine_translate(translator, "Два судна", "uk", "en")
    assert result == MachineTranslation(
        text="[uk>en] Два судна", source="uk", target="en", engine="argos"
    )
    assert result.label == "Machine translation uk→en (argos)"
    assert machine_translate(translator, "Two ships", "en", "en") is None
    assert machine_translate(None, "Два судна", "uk", "en") is None
    with pytest.raises(TranslatorUnavailable, match="uk→ru"):
        machine_translate(translator, "Два судна", "uk", "ru")


def test_any_translator_will_do() -> None:
    class Upper:
        name = "upper"

        def translate(self, text: str, source: str, target: str) -> str:
            return text.upper()

    translator: Translator = Upper()
    result = machine_translate(translator, "two ships", "en", "ru")
    assert result is not None
    assert (result.text, result.engine) == ("TWO SHIPS", "upper")


def test_without_the_package_there_is_no_translator(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # None in sys.modules makes the import fail, whether or not it is installed.
    monkeypatch.setitem(sys.modules, "argostranslate", None)
    monkeypatch.setitem(sys.modules, "argostranslate.translate", None)
    assert configured_translator("argos") is not None  # named: says how to install it
    assert configured_translator("auto", apertium_data=tmp_path) is None
    lazy = ArgosTranslator()  # creating one never fails
    with pytest.raises(TranslatorUnavailable, match=r"pip install argostranslate"):
        lazy.translate("текст", "ru", "en")


def test_a_package_that_fails_to_load_is_no_translator(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def broken(name: str) -> types.ModuleType:
        raise OSError("libctranslate2.so: cannot open shared object file")

    monkeypatch.setattr(importlib, "import_module", broken)
    assert configured_translator("auto", apertium_data=tmp_path) is None
    with pytest.raises(TranslatorUnavailable, match="cannot be loaded: OSError"):
        ArgosTranslator().translate("текст", "ru", "en")


def test_an_importable_package_is_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    module = types.ModuleType("argostranslate.translate")
    module.get_installed_languages = fake_argos(("ru", "en")).get_installed_languages  # type: ignore[attr-defined]
    package = types.ModuleType("argostranslate")
    package.translate = module  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "argostranslate", package)
    monkeypatch.setitem(sys.modules, "argostranslate.translate", module)
    translator = configured_translator("auto", apertium_data=tmp_path)  # no Apertium
    assert translator is not None
    assert translator.name == "argos"
    assert translator.translate("Курс", "ru", "en") == "[ru>en] Курс"


# ==========================================================================
# Certified translations (parley.core.translation): signed, countersigned


def _dsse_payload(raw: bytes) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(base64.b64decode(json.loads(raw)["payload"]))
    return payload


def _resign(identity: Identity, payload_type: str, payload: dict[str, Any]) -> bytes:
    return sign_dsse(
        payload_type, canonical_bytes(payload), identity.card.key_id, identity.sign_ed25519
    )


@pytest.fixture(scope="module")
def message() -> tuple[str, str]:
    """(envelope id, digest) of a real message from US-EUCOM to RU-GS."""
    pair = PartyPair.create()
    out = pair.a.send_text(["RU-GS"], "Two vessels without lights.", operator="maj.smith")
    return out.envelope_id, envelope_digest(out.raw)


def _certify(
    identity: Identity,
    message: tuple[str, str],
    now: datetime,
    *,
    operator: str = "col.petrov",
    text: str = "Два судна без огней.",
) -> bytes:
    return certify_translation(
        identity,
        envelope_id=message[0],
        envelope_digest=message[1],
        source_lang="en",
        target_lang="ru",
        text=text,
        operator=operator,
        now=now,
    )


def test_a_certified_translation_round_trips(
    ru_gs: Identity, lookup: CardLookup, message: tuple[str, str], now: datetime
) -> None:
    raw = _certify(ru_gs, message, now)
    assert json.loads(raw)["payloadType"] == CERTIFIED_TRANSLATION_TYPE
    assert _dsse_payload(raw) == {
        "envelope_digest": message[1],
        "envelope_id": message[0],
        "operator": "col.petrov",
        "party": "RU-GS",
        "source_lang": "en",
        "target_lang": "ru",
        "text": "Два судна без огней.",
        "translated_at": "2026-02-05T12:00:00.000Z",
        "type": "parley.certified-translation/v1",
        "v": 1,
    }
    read = read_certified_translation(raw, lookup)
    assert read == CertifiedTranslation(
        party="RU-GS",
        operator="col.petrov",
        envelope_id=message[0],
        envelope_digest=message[1],
        source_lang="en",
        target_lang="ru",
        text="Два судна без огней.",
        translated_at=now,
        raw=raw,
        digest=hashlib.sha256(raw).hexdigest(),
    )

    later = now + timedelta(minutes=5)
    counter = countersign_translation(ru_gs, raw, operator="maj.ivanova", now=later)
    assert json.loads(counter)["payloadType"] == COUNTERSIGNATURE_TYPE
    assert _dsse_payload(counter)["translation_digest"] == read.digest
    check = read_countersignature(counter, read, lookup)
    assert (check.party, check.operator, check.envelope_id) == ("RU-GS", "maj.ivanova", message[0])
    assert (check.translation_digest, check.countersigned_at) == (read.digest, later)
    assert check.digest == hashlib.sha256(counter).hexdigest()


def test_tampered_text_fails(
    ru_gs: Identity, lookup: CardLookup, message: tuple[str, str], now: datetime
) -> None:
    raw = _certify(ru_gs, message, now)
    outer = json.loads(raw)
    payload = _dsse_payload(raw)
    payload["text"] = "Одно судно без огней."
    outer["payload"] = base64.b64encode(canonical_bytes(payload)).decode()
    with pytest.raises(InvalidSignature, match="signature of RU-GS on this certified translation"):
        read_certified_translation(canonical_bytes(outer), lookup)


def test_the_translator_cannot_countersign(
    ru_gs: Identity, lookup: CardLookup, message: tuple[str, str], now: datetime
) -> None:
    raw = _certify(ru_gs, message, now)
    for same in ("col.petrov", "Col.Petrov", " col.petrov ", "ｃｏｌ.ｐｅｔｒｏｖ"):
        with pytest.raises(UsageError, match="made this translation and cannot countersign"):
            countersign_translation(ru_gs, raw, operator=same, now=now)
    # Signed by hand, bypassing that check, it is refused on reading.
    forged = _resign(
        ru_gs,
        COUNTERSIGNATURE_TYPE,
        {
            "countersigned_at": format_time(now),
            "envelope_id": message[0],
            "operator": "COL.PETROV",
            "party": "RU-GS",
            "translation_digest": hashlib.sha256(raw).hexdigest(),
            "type": "parley.translation-countersignature/v1",
            "v": 1,
        },
    )
    translation = read_certified_translation(raw, lookup)
    with pytest.raises(VerificationError, match="who made the translation"):
        read_countersignature(forged, translation, lookup)


def test_a_countersignature_of_another_translation_is_refused(
    ru_gs: Identity, lookup: CardLookup, message: tuple[str, str], now: datetime
) -> None:
    first = _certify(ru_gs, message, now)
    second = _certify(ru_gs, message, now, text="Два корабля без огней.")
    counter = countersign_translation(ru_gs, first, operator="maj.ivanova", now=now)
    assert read_countersignature(counter, read_certified_translation(first, lookup), lookup)
    with pytest.raises(VerificationError, match=r"is for translation [0-9a-f]{64} of message"):
        read_countersignature(counter, read_certified_translation(second, lookup), lookup)


def test_a_signature_by_the_wrong_key_is_refused(
    ru_gs: Identity,
    us_eucom: Identity,
    lookup: CardLookup,
    message: tuple[str, str],
    now: datetime,
) -> None:
    raw = _certify(ru_gs, message, now)
    payload = _dsse_payload(raw)
    # US-EUCOM's key, with US-EUCOM's key id, on a translation that says RU-GS made it.
    wrong = _resign(us_eucom, CERTIFIED_TRANSLATION_TYPE, payload)
    with pytest.raises(InvalidSignature, match="signature of RU-GS"):
        read_certified_translation(wrong, lookup)
    # US-EUCOM's key under RU-GS's key id.
    sneaky = sign_dsse(
        CERTIFIED_TRANSLATION_TYPE,
        canonical_bytes(payload),
        ru_gs.card.key_id,
        us_eucom.sign_ed25519,
    )
    with pytest.raises(InvalidSignature, match="signature of RU-GS"):
        read_certified_translation(sneaky, lookup)
    # And the countersignature likewise.
    translation = read_certified_translation(raw, lookup)
    counter = _dsse_payload(countersign_translation(ru_gs, raw, operator="maj.ivanova", now=now))
    with pytest.raises(InvalidSignature, match="signature of RU-GS on this translation countersig"):
        read_countersignature(
            _resign(us_eucom, COUNTERSIGNATURE_TYPE, counter), translation, lookup
        )


def test_a_signer_without_a_pinned_card_is_unknown(
    ru_gs: Identity, message: tuple[str, str], now: datetime
) -> None:
    raw = _certify(ru_gs, message, now)
    with pytest.raises(UnknownSender, match="no pinned card for RU-GS"):
        read_certified_translation(raw, lambda party: None)


def test_another_terminals_translation_is_countersigned_with_its_card(
    ru_gs: Identity,
    us_eucom: Identity,
    lookup: CardLookup,
    message: tuple[str, str],
    now: datetime,
) -> None:
    raw = _certify(ru_gs, message, now)
    # Not verifiable with only this terminal's own card ...
    with pytest.raises(UnknownSender):
        countersign_translation(us_eucom, raw, operator="maj.smith", now=now)
    # ... and the same operator name at another party is another person.
    counter = countersign_translation(us_eucom, raw, operator="col.petrov", now=now, lookup=lookup)
    check = read_countersignature(counter, read_certified_translation(raw, lookup), lookup)
    assert (check.party, check.operator) == ("US-EUCOM", "col.petrov")


def test_a_countersignature_cannot_predate_the_translation(
    ru_gs: Identity, lookup: CardLookup, message: tuple[str, str], now: datetime
) -> None:
    raw = _certify(ru_gs, message, now)
    earlier = now - timedelta(seconds=1)
    with pytest.raises(UsageError, match="cannot countersign at"):
        countersign_translation(ru_gs, raw, operator="maj.ivanova", now=earlier)
    counter = _dsse_payload(countersign_translation(ru_gs, raw, operator="maj.ivanova", now=now))
    counter["countersigned_at"] = format_time(earlier)
    with pytest.raises(VerificationError, match="before the translation it countersigns"):
        read_countersignature(
            _resign(ru_gs, COUNTERSIGNATURE_TYPE, counter),
            read_certified_translation(raw, lookup),
            lookup,
        )


def test_a_translation_dated_outside_the_card_is_refused(
    ru_gs: Identity, lookup: CardLookup, message: tuple[str, str]
) -> None:
    late = ru_gs.card.valid_until + timedelta(days=1)
    raw = _certify(ru_gs, message, late)
    with pytest.raises(InvalidSignature, match="outside the validity of RU-GS's card"):
        read_certified_translation(raw, lookup)


@pytest.mark.parametrize(
    ("change", "error", "says"),
    [
        (lambda p: p.update(extra=1), SchemaViolation, "unexpected field"),
        (lambda p: p.pop("source_lang"), SchemaViolation, "lacks the field\\(s\\) source_lang"),
        (lambda p: p.update(v=2), UnknownVersion, "not a parley.certified-translation/v1"),
        (lambda p: p.update(v=True), UnknownVersion, "not a parley"),
        (lambda p: p.update(type="parley.receipt/v1"), UnknownVersion, "not a parley"),
        (lambda p: p.update(text=" \n"), SchemaViolation, "text is empty"),
        (lambda p: p.update(target_lang="en"), SchemaViolation, "is no translation"),
        (lambda p: p.update(envelope_digest="AB" * 32), SchemaViolation, "64 lowercase hex"),
        (lambda p: p.update(envelope_id="not-a-uuid"), SchemaViolation, "not a UUID"),
        (lambda p: p.update(operator="x\x1b[2J"), SchemaViolation, "control character"),
        (lambda p: p.update(translated_at="2026-02-05"), SchemaViolation, "UTC time"),
    ],
)
def test_a_malformed_translation_is_refused(
    ru_gs: Identity,
    lookup: CardLookup,
    message: tuple[str, str],
    now: datetime,
    change: Callable[[dict[str, Any]], object],
    error: type[Exception],
    says: str,
) -> None:
    payload = _dsse_payload(_certify(ru_gs, message, now))
    change(payload)
    with pytest.raises(error, match=says):
        read_certified_translation(_resign(ru_gs, CERTIFIED_TRANSLATION_TYPE, payload), lookup)


def test_the_payload_types_are_not_interchangeable(
    ru_gs: Identity, lookup: CardLookup, message: tuple[str, str], now: datetime
) -> None:
    raw = _certify(ru_gs, message, now)
    counter = countersign_translation(ru_gs, raw, operator="maj.ivanova", now=now)
    with pytest.raises(UnknownVersion, match="payload type"):
        read_certified_translation(counter, lookup)
    with pytest.raises(UnknownVersion, match="payload type"):
        read_countersignature(raw, read_certified_translation(raw, lookup), lookup)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"envelope_id": "019c2dac-6a00-4c89-bf37-8e083c95fc6f"}, "UUIDv7"),
        ({"envelope_digest": "abc"}, "64 lowercase hex"),
        ({"source_lang": "Russian"}, "source_lang must be a language tag"),
        ({"target_lang": "en-GB"}, "from en into en-GB is no translation"),
        ({"text": ""}, "text is empty"),
        ({"operator": " "}, "non-empty name"),
        ({"operator": "o" * 201}, "longer than 200"),
        ({"now": datetime(2026, 2, 5, 12)}, "timezone-aware"),
    ],
)
def test_bad_arguments_are_our_mistake(
    ru_gs: Identity, message: tuple[str, str], now: datetime, change: dict[str, Any], says: str
) -> None:
    arguments: dict[str, Any] = {
        "envelope_id": message[0],
        "envelope_digest": message[1],
        "source_lang": "en",
        "target_lang": "ru",
        "text": "Два судна.",
        "operator": "col.petrov",
        "now": now,
        **change,
    }
    with pytest.raises(UsageError, match=says):
        certify_translation(ru_gs, **arguments)


def test_same_operator() -> None:
    assert same_operator("RU-GS", "col.petrov", "RU-GS", "Col.Petrov ")
    assert not same_operator("RU-GS", "col.petrov", "US-EUCOM", "col.petrov")
    assert not same_operator("RU-GS", "col.petrov", "RU-GS", "maj.ivanova")
