"""Machine translation of free text, always labelled as such.

A machine translation is a reading aid for the receiving operator, never the
sender's words: it is returned as a ``MachineTranslation`` that names the
engine, and the console, the API and the CLI show it marked as machine
translation beside the original. Nothing here is signed or logged; a
translation that counts is a certified one (``parley.core.translation``),
made and signed by an operator.

Two offline, open-source engines, neither a Python dependency of Parley:

* **Apertium** (``ApertiumTranslator``), rule-based, for Russian↔Ukrainian:
  Debian's ``apertium-rus-ukr`` (``apt-get install apertium-rus-ukr``), run
  as its own programs, with no shell;
* **Argos Translate** (``ArgosTranslator``), neural, for the pairs whose
  models are installed (``pip install argostranslate``, then
  ``argospm install translate-ru_en``, one model per direction); between
  Russian and Ukrainian it pivots through English when both models
  (``ru_en`` and ``en_uk``) are installed.

``configured_translator`` chooses by the ``[translation] engine`` setting:
``auto`` (the default) asks Apertium first for a pair it has and Argos for
the others (``EngineChain``); ``apertium`` or ``argos`` use that engine
alone; ``off`` makes no machine translation.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import structlog

from parley.config import TRANSLATION_ENGINES, Config

__all__ = [
    "APERTIUM_DATA",
    "ENGINES",
    "ApertiumTranslator",
    "ArgosTranslator",
    "EngineChain",
    "MachineTranslation",
    "Translator",
    "TranslatorUnavailable",
    "available_translator",
    "configured_translator",
    "machine_translate",
    "machine_translation_of",
    "translator_for",
]

log = structlog.get_logger("parley.translate")

PIVOT: Final = "en"

#: The choices of the ``[translation] engine`` setting.
ENGINES: Final = TRANSLATION_ENGINES


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

    def as_dict(self) -> dict[str, Any]:
        """For the API and ``--json``: the label travels with the text, never signed."""
        return {
            "label": self.label,
            "text": self.text,
            "source": self.source,
            "target": self.target,
            "engine": self.engine,
            "senders_words": False,
            "signed": False,
        }


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


# --------------------------------------------------------------------------
# Apertium

APERTIUM_DATA: Final = Path("/usr/share/apertium")
"""Where Debian's Apertium language pairs put their modes (``modes/rus-ukr.mode``)."""

#: Parley's language codes and Apertium's (ISO 639-3).
_APERTIUM_CODES: Final = {"en": "eng", "ru": "rus", "uk": "ukr"}

#: The shell words a mode may hold that Parley does not run (it runs no shell).
_SHELL_TOKENS: Final = frozenset(
    ["&", "&&", ";", ";;", "<", ">", ">>", ">&", "<&", "(", ")", "||", "|&"]
)

#: What the ``apertium`` script gives a mode: ``$1``, the generator's option
#: (-n: no unknown-word marks, as ``apertium -u``); ``$2``, the tagger's (none).
_MODE_VARIABLES: Final = {"$1": ["-n"], "$2": []}

_TAGGER: Final = "apertium-tagger"
_CONSTRAINT_GRAMMAR: Final = "cg-proc"


class _StageFailed(Exception):
    def __init__(self, program: str, returncode: int, stderr: str) -> None:
        super().__init__(program)
        self.program, self.returncode, self.stderr = program, returncode, stderr

    def describe(self) -> str:
        how = (
            f"was killed by signal {-self.returncode}"
            if self.returncode < 0
            else f"exited with status {self.returncode}"
        )
        last = self.stderr.strip().splitlines()[-1:] or [""]
        return f"{self.program} {how}" + (f": {last[0]}" if last[0] else "")


class ApertiumTranslator:
    """Apertium, through an installed language pair's mode (``rus-ukr``, ``ukr-rus``).

    A mode is the pair's pipeline of Apertium programs; Parley runs them one
    after the other on the text, as lists of arguments (no shell), within
    ``timeout`` seconds in all, and checks every program's exit status: the
    ``apertium`` script answers nothing, and succeeds, when a program of its
    pipeline crashes. Apertium 3.8.3's part-of-speech tagger (Debian 12)
    crashes on some Russian and Ukrainian sentences (apertium/apertium#223);
    the text is then translated again with the constraint grammar choosing
    alone (``cg-proc -1``, its first remaining reading), a slightly rougher
    but complete translation.

    Words Apertium does not know are left as written, without its marks
    (``*`` unknown, ``@`` not in the bilingual dictionary, ``#`` not
    inflected).
    """

    name = "apertium"

    def __init__(self, data: Path = APERTIUM_DATA, *, timeout: float = 30.0) -> None:
        self.data = Path(data)
        self.timeout = timeout

    @property
    def modes_dir(self) -> Path:
        return self.data / "modes"

    def modes(self) -> list[str]:
        """The installed modes (what ``apertium -l`` lists), e.g. ``["rus-ukr", "ukr-rus"]``."""
        try:
            return sorted(p.stem for p in self.modes_dir.glob("*.mode") if p.is_file())
        except OSError:
            return []

    def installed(self) -> bool:
        """Apertium's text programs and at least one language pair are installed."""
        return shutil.which("apertium-destxt") is not None and bool(self.modes())

    @staticmethod
    def mode_name(source: str, target: str) -> str | None:
        codes = _APERTIUM_CODES.get(_primary(source)), _APERTIUM_CODES.get(_primary(target))
        return None if None in codes else f"{codes[0]}-{codes[1]}"

    def supports(self, source: str, target: str) -> bool:
        mode = self.mode_name(source, target)
        return mode is not None and mode in self.modes()

    def translate(self, text: str, source: str, target: str) -> str:
        if _primary(source) == _primary(target):
            return text
        mode = self.mode_name(source, target)
        stages = self._stages(mode, source, target)
        deadline = time.monotonic() + self.timeout
        try:
            output = self._run(stages, text, deadline)
        except _StageFailed as failed:
            fallback = _without_tagger(stages) if failed.program == _TAGGER else None
            if fallback is None:
                raise TranslatorUnavailable(
                    f"Apertium {mode} failed: {failed.describe()}"
                ) from None
            log.warning("apertium_tagger_failed", mode=mode, error=failed.describe())
            try:
                output = self._run(fallback, text, deadline)
            except _StageFailed as again:
                raise TranslatorUnavailable(
                    f"Apertium {mode} failed: {failed.describe()}; "
                    f"without the tagger: {again.describe()}"
                ) from None
        return _clean(output, text)

    def _stages(self, mode: str | None, source: str, target: str) -> list[list[str]]:
        """The programs to run: Apertium's text reader, the mode, its text writer."""
        if shutil.which("apertium-destxt") is None or shutil.which("apertium-retxt") is None:
            raise TranslatorUnavailable(
                "Apertium is not installed (apt-get install apertium-rus-ukr, which brings "
                "the apertium programs and the Russian–Ukrainian pair)"
            )
        installed = ", ".join(self.modes()) or "none"
        if mode is None or not (self.modes_dir / f"{mode}.mode").is_file():
            wanted = mode or f"{source}→{target}"
            raise TranslatorUnavailable(
                f"no Apertium language pair {wanted} in {self.modes_dir} "
                f"(installed modes: {installed}; Russian–Ukrainian: "
                "apt-get install apertium-rus-ukr)"
            )
        path = self.modes_dir / f"{mode}.mode"
        try:
            pipeline = _parse_mode(path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise TranslatorUnavailable(f"Apertium mode {path} cannot be used: {exc}") from None
        for stage in pipeline:
            if shutil.which(stage[0]) is None:
                raise TranslatorUnavailable(
                    f"{stage[0]}, which Apertium mode {mode} runs, is not installed "
                    "(apt-get install apertium-rus-ukr)"
                )
        return [["apertium-destxt"], *pipeline, ["apertium-retxt"]]

    @staticmethod
    def _run(stages: list[list[str]], text: str, deadline: float) -> str:
        data = text.encode("utf-8")
        env = {**os.environ, "LC_ALL": "C.UTF-8"}
        for stage in stages:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise subprocess.TimeoutExpired(stage, 0)
                done = subprocess.run(  # noqa: S603 - an installed Apertium mode's programs
                    stage, input=data, capture_output=True, timeout=left, env=env, check=False
                )
            except subprocess.TimeoutExpired:
                raise TranslatorUnavailable(
                    f"Apertium took longer than the translation timeout ({stage[0]} unfinished)"
                ) from None
            except OSError as exc:
                raise TranslatorUnavailable(f"Apertium: cannot run {stage[0]}: {exc}") from None
            if done.returncode != 0:
                raise _StageFailed(
                    stage[0], done.returncode, done.stderr.decode("utf-8", "replace")
                )
            data = done.stdout
        return data.decode("utf-8", "replace")


def _parse_mode(text: str) -> list[list[str]]:
    """A mode file's pipeline as argument lists; ``$1`` generates without unknown-word marks."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    stages: list[list[str]] = [[]]
    for word in lexer:
        if word == "|":
            stages.append([])
        elif word in _SHELL_TOKENS:
            raise ValueError(f"it uses the shell ({word!r}), which Parley does not run")
        elif word in _MODE_VARIABLES:
            stages[-1].extend(_MODE_VARIABLES[word])
        elif word.startswith("$"):
            raise ValueError(f"it needs the shell variable {word}")
        else:
            stages[-1].append(word)
    if not stages or any(not stage for stage in stages):
        raise ValueError("it has an empty step")
    return stages


def _without_tagger(stages: list[list[str]]) -> list[list[str]] | None:
    """The pipeline with the constraint grammar choosing instead of the tagger."""
    for i, stage in enumerate(stages):
        if stage[0] == _TAGGER and i > 0 and stages[i - 1][0] == _CONSTRAINT_GRAMMAR:
            grammar = stages[i - 1]
            # -1: the first reading left; -n: no surface form, as the tagger writes it.
            return [*stages[: i - 1], [grammar[0], "-1", "-n", *grammar[1:]], *stages[i + 1 :]]
    return None


#: ``#`` marks a word Apertium translated but could not inflect (``#сполучення``).
_NOT_INFLECTED: Final = re.compile(r"#(?=[^\W\d_])")


def _clean(output: str, original: str) -> str:
    """The translation without Apertium's remaining marks, ending as the original ends."""
    # Generation with -n has dropped `*` and `@`; a `#` before a word is a mark,
    # unless the sender wrote one (a hashtag), which is then left alone.
    if not _NOT_INFLECTED.search(original):
        output = _NOT_INFLECTED.sub("", output)
    if not original.endswith("\n"):
        output = output.rstrip("\n")
    return output


# --------------------------------------------------------------------------
# Choosing the engine


class EngineChain:
    """Several engines, each pair served by the first that has it.

    ``[ApertiumTranslator, ArgosTranslator]``: Apertium for Russian↔Ukrainian,
    Argos for the pairs whose models are installed. An engine that cannot
    translate a pair (``TranslatorUnavailable``) passes it to the next; the
    translation is labelled with the engine that made it (``translate_naming``).
    """

    def __init__(self, engines: Sequence[Translator]) -> None:
        if not engines:
            raise ValueError("an engine chain needs an engine")
        self.engines = tuple(engines)
        self.name = ", ".join(engine.name for engine in self.engines)

    def translate_naming(self, text: str, source: str, target: str) -> tuple[str, str]:
        """The translation and the name of the engine that made it."""
        reasons = []
        for engine in self.engines:
            try:
                return engine.translate(text, source, target), engine.name
            except TranslatorUnavailable as exc:
                reasons.append(f"{engine.name}: {exc}")
        raise TranslatorUnavailable("; ".join(reasons))

    def translate(self, text: str, source: str, target: str) -> str:
        return self.translate_naming(text, source, target)[0]


def configured_translator(
    engine: str = "auto", *, timeout: float = 30.0, apertium_data: Path = APERTIUM_DATA
) -> Translator | None:
    """The translator the ``[translation] engine`` setting asks for; None for none.

    ``auto``: Apertium first when it is installed, then Argos when it can be
    imported; None when neither is. ``apertium`` and ``argos`` name one
    engine, which says how to install it when it is missing; ``off``: None.
    """
    if engine not in ENGINES:
        raise ValueError(f"translation engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine == "off":
        return None
    if engine == "apertium":
        return ApertiumTranslator(apertium_data, timeout=timeout)
    if engine == "argos":
        return ArgosTranslator()
    engines: list[Translator] = []
    apertium = ApertiumTranslator(apertium_data, timeout=timeout)
    if apertium.installed():
        engines.append(apertium)
    with contextlib.suppress(TranslatorUnavailable):
        engines.append(ArgosTranslator(_import_argos()))
    if not engines:
        return None
    return engines[0] if len(engines) == 1 else EngineChain(engines)


def translator_for(config: Config) -> Translator | None:
    """The translator a terminal's configuration asks for (``[translation]``)."""
    return configured_translator(config.translation_engine, timeout=config.translation_timeout)


def available_translator() -> Translator | None:
    """The engines that are installed (``configured_translator("auto")``), or None."""
    return configured_translator("auto")


def machine_translate(
    translator: Translator | None, text: str, source: str, target: str
) -> MachineTranslation | None:
    """A labelled machine translation; None with no translator or nothing to translate.

    Raises ``TranslatorUnavailable`` when the translator lacks the language pair.
    """
    if translator is None or _primary(source) == _primary(target):
        return None
    if isinstance(translator, EngineChain):
        translated, engine = translator.translate_naming(text, source, target)
    else:
        translated, engine = translator.translate(text, source, target), translator.name
    return MachineTranslation(text=translated, source=source, target=target, engine=engine)


NO_TRANSLATOR: Final = (
    "no machine translation engine is installed (see the README, Free-text translation)"
)


def machine_translation_of(
    translator: Translator | None, message: Mapping[str, Any], lang: str
) -> dict[str, Any]:
    """A stored message's machine translation into ``lang``, as the API and CLI give it.

    ``machine_translation`` is the labelled translation (``MachineTranslation.as_dict``)
    or None; ``untranslated`` says why there is none when one was wanted. Only
    free text written in another language is translated: a form is shown in the
    reader's language from its signed data, and a message that does not verify
    is shown as nothing it claims.
    """
    answer: dict[str, Any] = {
        "id": message.get("id"),
        "lang": lang,
        "original_lang": message.get("lang"),
        "machine_translation": None,
        "untranslated": None,
    }
    if message.get("verified") is False:
        answer["untranslated"] = "the message does not verify; nothing it claims is translated"
        return answer
    if message.get("kind") != "text" or not isinstance(message.get("body"), Mapping):
        answer["untranslated"] = (
            "only free text is machine-translated; a form is shown in the reader's language"
        )
        return answer
    source = str(message.get("lang") or "")
    if not source or _primary(source) == _primary(lang):
        return answer  # read as written
    if translator is None:
        answer["untranslated"] = NO_TRANSLATOR
        return answer
    try:
        translated = machine_translate(
            translator, str(message["body"].get("text", "")), source, lang
        )
    except TranslatorUnavailable as exc:
        answer["untranslated"] = str(exc)
    except Exception as exc:  # a reading aid must never break the reading
        log.warning("machine_translation_failed", error=str(exc))
        answer["untranslated"] = f"{type(exc).__name__}: {exc}"
    else:
        answer["machine_translation"] = translated.as_dict() if translated else None
    return answer
