"""Machine translation of free text, always labelled as such.

A machine translation is a reading aid for the receiving operator, never the
sender's words: it is returned as a ``MachineTranslation`` that names the
engine, and the console and CLI show it marked as machine translation beside
the original. Nothing here is signed or logged; a translation that counts
is a certified one (``parley.core.translation``), made and signed by an
operator.

The engine is Argos Translate (offline, open source), used when it is
installed together with the language models; Parley does not depend on it.
Installing it is an operator's decision (see the README)::

    pip install argostranslate
    argospm install translate-ru_en    # one model per direction

Between Russian and Ukrainian Argos pivots through English when both
models (``ru_en`` and ``en_uk``) are installed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Final, Protocol

__all__ = [
    "ArgosTranslator",
    "MachineTranslation",
    "Translator",
    "TranslatorUnavailable",
    "available_translator",
    "machine_translate",
]

PIVOT: Final = "en"


class Translator(Protocol):
    """Anything that translates text between two language codes (``en``, ``ru``, ``uk``)."""

    name: str

    def translate(self, text: str, source: str, target: str) -> str: ...


class TranslatorUnavailable(Exception):
    """No translation can be made: the engine or the language model is not installed."""


@dataclass(frozen=True)
class MachineTranslation:
    """A machine translation, labelled with its engine: never the sender's words."""

    text: str
    source: str
    target: str
    engine: str

    @property
    def label(self) -> str:
        return f"Machine translation {self.source}→{self.target} ({self.engine})"


def _import_argos() -> Any:
    try:
        return importlib.import_module("argostranslate.translate")
    except ImportError as exc:
        raise TranslatorUnavailable(
            f"Argos Translate is not installed (pip install argostranslate): {exc}"
        ) from None
    except Exception as exc:  # its own imports (ctranslate2, a GPU library) can fail
        raise TranslatorUnavailable(
            f"Argos Translate is installed but cannot be loaded: {type(exc).__name__}: {exc}"
        ) from None


def _primary(lang: str) -> str:
    """``ru`` for ``ru`` or ``ru-RU``: Argos knows languages, not regions."""
    return lang.split("-", 1)[0].lower()


class ArgosTranslator:
    """Argos Translate, through its installed languages.

    ``module`` stands in for ``argostranslate.translate`` (tests); without it
    the package is imported on first use, so creating a translator never
    fails and never loads the models.
    """

    name = "argos"

    def __init__(self, module: Any = None) -> None:
        self._module = module

    def _languages(self) -> dict[str, Any]:
        if self._module is None:
            self._module = _import_argos()
        return {lang.code: lang for lang in self._module.get_installed_languages()}

    @staticmethod
    def _direct(languages: dict[str, Any], source: str, target: str) -> Any:
        if source not in languages or target not in languages:
            return None
        return languages[source].get_translation(languages[target])

    def translate(self, text: str, source: str, target: str) -> str:
        source, target = _primary(source), _primary(target)
        if source == target:
            return text
        languages = self._languages()
        translation = self._direct(languages, source, target)
        if translation is not None:
            return str(translation.translate(text))
        # Argos composes a pivot itself when both models are installed; a
        # version that does not still gets one here.
        if PIVOT not in (source, target):
            first = self._direct(languages, source, PIVOT)
            second = self._direct(languages, PIVOT, target)
            if first is not None and second is not None:
                return str(second.translate(str(first.translate(text))))
        raise TranslatorUnavailable(self._missing(languages, source, target))

    @staticmethod
    def _missing(languages: dict[str, Any], source: str, target: str) -> str:
        installed = ", ".join(sorted(languages)) or "none"
        needed = f"argospm install translate-{source}_{target}"
        if PIVOT not in (source, target):
            needed += (
                f", or translate-{source}_{PIVOT} and translate-{PIVOT}_{target} "
                f"to go through {PIVOT}"
            )
        return (
            f"no Argos language model {source}→{target} installed ({needed}); "
            f"installed languages: {installed}"
        )


def available_translator() -> Translator | None:
    """Argos Translate when it can be imported, else None."""
    try:
        module = _import_argos()
    except TranslatorUnavailable:
        return None
    return ArgosTranslator(module)


def machine_translate(
    translator: Translator | None, text: str, source: str, target: str
) -> MachineTranslation | None:
    """A labelled machine translation; None with no translator or nothing to translate.

    Raises ``TranslatorUnavailable`` when the translator lacks the language pair.
    """
    if translator is None or _primary(source) == _primary(target):
        return None
    return MachineTranslation(
        text=translator.translate(text, source, target),
        source=source,
        target=target,
        engine=translator.name,
    )
