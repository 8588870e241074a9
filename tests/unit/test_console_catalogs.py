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


def _extracted() -> dict[str, str]:
    found: dict[str, str] = {}
    for filename, _lineno, message, _comments, _context in extract_from_dir(
        CONSOLE,
        method_map=METHODS,
        options_map={"templates/**.html": {"extensions": "jinja2.ext.i18n"}},
        keywords=KEYWORDS,
    ):
        for text in message if isinstance(message, tuple) else (message,):
            if text:
                found.setdefault(text, filename)
    return found


MESSAGES = _extracted()
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
