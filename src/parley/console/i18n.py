"""The console's languages: Babel catalogs (``locale/<lang>/*.po``) read at start.

Each part of the console keeps its strings in a catalog of its own
(``base.po``, ``messages.po``, …); a language's catalogs are merged. The
catalogs are read from the ``.po`` files themselves (compiled in memory), so
there is no build step and no compiled file to go stale.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from contextvars import ContextVar
from functools import cache
from importlib import resources

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

__all__ = [
    "LANGS",
    "LANG_NAMES",
    "N_",
    "current_lang",
    "gettext",
    "ngettext",
    "translations",
    "use",
]

LANGS = ("en", "ru", "uk")
#: Each language named in itself, for the language switch.
LANG_NAMES = {"en": "English", "ru": "Русский", "uk": "Українська"}

current_lang: ContextVar[str] = ContextVar("current_lang", default="en")


def N_(message: str) -> str:  # noqa: N802 - the gettext convention
    """Marks a string for translation where it is defined; translated where it is shown."""
    return message


@cache
def translations(lang: str) -> NullTranslations:
    """Every catalog of ``lang`` merged; English is the source language."""
    if lang == "en" or lang not in LANGS:
        return NullTranslations()
    merged: Translations | None = None
    folder = resources.files(__package__).joinpath("locale", lang)
    for item in sorted(folder.iterdir(), key=lambda i: i.name):
        if not item.name.endswith(".po"):
            continue
        with item.open("rb") as po:
            catalog = read_po(po, locale=lang)
        buffer = io.BytesIO()
        write_mo(buffer, catalog)
        buffer.seek(0)
        loaded = Translations(fp=buffer)
        if merged is None:
            merged = loaded
        else:
            merged.merge(loaded)
    return merged if merged is not None else NullTranslations()


def gettext(message: str) -> str:
    return translations(current_lang.get()).gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return translations(current_lang.get()).ngettext(singular, plural, n)


def use(lang: str) -> Callable[[], None]:
    """Make ``lang`` the current language; returns the function that restores the last."""
    token = current_lang.set(lang if lang in LANGS else "en")
    return lambda: current_lang.reset(token)
