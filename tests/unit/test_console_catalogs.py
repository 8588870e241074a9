"""Every string the console shows has a Russian and a Ukrainian translation.

The strings are extracted from the templates and the page modules the way
``pybabel extract`` does (Jinja2's Babel extractor, Python's gettext calls);
each must be translated, non-empty, in the merged catalogs of both languages,
with the same placeholders as the English.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir

from parley.console import i18n

CONSOLE = Path(str(resources.files("parley.console")))
METHODS = [("templates/**.html", "jinja2.ext:babel_extract"), ("*.py", "python")]
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None}


def _extracted() -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    """(singular messages, plural pairs), each with the file it was found in."""
    found: dict[str, str] = {}
    plurals: dict[tuple[str, str], str] = {}
    for filename, _lineno, message, _comments, _context in extract_from_dir(
        CONSOLE,
        method_map=METHODS,
        options_map={"templates/**.html": {"extensions": "jinja2.ext.i18n"}},
        keywords=KEYWORDS,
    ):
        if isinstance(message, tuple):
            singular, plural = message[0], message[1]
            if singular and plural:
                plurals.setdefault((singular, plural), filename)
        elif message:
            found.setdefault(message, filename)
    return found, plurals


MESSAGES, PLURALS = _extracted()
_PLACEHOLDER = re.compile(r"%\([a-z_]+\)s|\{[a-z_]*\}|%s|%d")


def test_the_extraction_finds_the_console_strings() -> None:
    # The check below is only as good as the extraction: it must see the nav and a page.
    assert {"Inbox", "Handover", "Wrong name or password."} <= set(MESSAGES)
    assert len(MESSAGES) >= 30


@pytest.mark.parametrize("lang", ["ru", "uk"])
def test_every_console_string_is_translated(lang: str) -> None:
    catalog = i18n.translations(lang)
    missing = [
        f"{where}: {text!r}"
        for text, where in sorted(MESSAGES.items())
        if catalog.gettext(text) == text and text not in {"Parley"}
    ]
    assert missing == [], f"{len(missing)} untranslated into {lang}:\n" + "\n".join(missing)


@pytest.mark.parametrize("lang", ["ru", "uk"])
def test_every_plural_is_translated_in_every_form(lang: str) -> None:
    catalog = i18n.translations(lang)
    for (singular, plural), where in PLURALS.items():
        for n in (1, 2, 5):
            english = singular if n == 1 else plural
            translated = catalog.ngettext(singular, plural, n)
            assert translated != english, f"{where}: {english!r} untranslated for n={n}"
    # Russian and Ukrainian have three forms: 1, 2 and 5 must not all be the same.
    for singular, plural in PLURALS:
        forms = {catalog.ngettext(singular, plural, n) for n in (1, 2, 5)}
        assert len(forms) >= 2, (singular, forms)


@pytest.mark.parametrize("lang", ["ru", "uk"])
def test_translations_keep_their_placeholders(lang: str) -> None:
    catalog = i18n.translations(lang)
    for text in MESSAGES:
        translated = catalog.gettext(text)
        assert sorted(_PLACEHOLDER.findall(translated)) == sorted(_PLACEHOLDER.findall(text)), (
            text,
            translated,
        )


def test_ukrainian_is_not_russian() -> None:
    catalog = i18n.translations("uk")
    for text in MESSAGES:
        assert not set(catalog.gettext(text)) & set("ыэъё"), (text, catalog.gettext(text))


@pytest.mark.parametrize("lang", ["ru", "uk"])
def test_no_two_catalogs_translate_one_string_differently(lang: str) -> None:
    # The catalogs of a language are merged; a later one would silently win.
    from babel.messages.pofile import read_po

    seen: dict[str, tuple[str, str]] = {}
    clashes = []
    for po in sorted((CONSOLE / "locale" / lang).glob("*.po")):
        with po.open("rb") as f:
            catalog = read_po(f, locale=lang)
        for message in catalog:
            if not message.id or not isinstance(message.id, str):
                continue
            text = str(message.string)
            if message.id in seen and seen[message.id][0] != text:
                clashes.append(f"{message.id!r}: {seen[message.id]} vs {po.name}: {text!r}")
            seen.setdefault(message.id, (text, po.name))
    assert clashes == []
