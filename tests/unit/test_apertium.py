"""Machine translation by Apertium, for real: Debian's ``apertium-rus-ukr``.

The pair is a system package (``scripts/install-system-deps`` installs it);
without it these tests fail, saying so, rather than skip. The expected
translations are what Apertium 3.8.3 with apertium-rus-ukr 0.2.1 (Debian 12)
gives: rule-based, so the same sentence always comes out the same.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from parley.config import Config
from parley.errors import UsageError
from parley.forms.translate import (
    APERTIUM_DATA,
    ApertiumTranslator,
    ArgosTranslator,
    EngineChain,
    MachineTranslation,
    TranslatorUnavailable,
    _parse_mode,
    configured_translator,
    machine_translate,
    machine_translation_of,
    translator_for,
)
from tests.unit.test_translate import fake_argos

# Apertium's programs run as processes.
pytestmark = pytest.mark.subprocess

MODES = APERTIUM_DATA / "modes"


@pytest.fixture(scope="module")
def apertium() -> ApertiumTranslator:
    """The installed pair; a clear failure when it is missing."""
    translator = ApertiumTranslator()
    missing = (
        "Apertium's Russian-Ukrainian pair is not installed: run scripts/install-system-deps "
        "(apt-get install apertium-rus-ukr)"
    )
    assert shutil.which("apertium"), missing
    assert {"rus-ukr", "ukr-rus"} <= set(translator.modes()), missing
    return translator


@pytest.mark.parametrize(
    ("source", "target", "text", "expected"),
    [
        ("ru", "uk", "Сегодня хорошая погода.", "Сьогодні хороша погода."),
        ("ru", "uk", "Спасибо за помощь.", "Спасибі за допомогу."),
        ("ru", "uk", "Уровень радиации в норме.", "Рівень радіації у нормі."),
        ("ru", "uk", "Внимание!", "Увага!"),
        ("uk", "ru", "Дякую за допомогу.", "Благодарю за помощь."),
        ("uk", "ru", "Сьогодні гарна погода.", "Сегодня хорошая погода."),
        ("uk", "ru", "Ми отримали ваше повідомлення.", "Мы получили ваше сообщение."),
    ],
)
def test_a_known_sentence_comes_out_in_the_other_language(
    apertium: ApertiumTranslator, source: str, target: str, text: str, expected: str
) -> None:
    assert apertium.translate(text, source, target) == expected


def test_the_result_is_labelled_machine_translation_by_apertium(
    apertium: ApertiumTranslator,
) -> None:
    result = machine_translate(apertium, "Спасибо за помощь.", "ru-RU", "uk")
    assert result == MachineTranslation(
        text="Спасибі за допомогу.", source="ru-RU", target="uk", engine="apertium"
    )
    assert result.label == "Machine translation ru-RU→uk (apertium)"
    assert result.as_dict()["signed"] is False
    assert result.as_dict()["senders_words"] is False


def test_lines_stay_lines_and_nothing_is_lost(apertium: ApertiumTranslator) -> None:
    # Several sentences at once: a crash of one program must not lose any of them.
    text = "Сегодня хорошая погода.\nСпасибо за помощь.\nУровень радиации в норме."
    assert apertium.translate(text, "ru", "uk") == (
        "Сьогодні хороша погода.\nСпасибі за допомогу.\nРівень радіації у нормі."
    )


def test_unknown_words_are_left_as_written_without_marks(apertium: ApertiumTranslator) -> None:
    # `домой` is not in the pair's dictionary: `apertium rus-ukr` writes `*домой`.
    assert apertium.translate("Он пришёл домой.", "ru", "uk") == "Він прийшов домой."
    # The sender's own signs are kept.
    marked = apertium.translate("Сообщение #5 от @user *срочно*", "ru", "uk")
    assert marked == "Сполучення #5 від @user *терміново*"


def test_the_same_language_is_not_translated(apertium: ApertiumTranslator) -> None:
    assert apertium.translate("Без перевода", "ru", "ru-RU") == "Без перевода"


def test_the_mode_is_run_as_programs_without_a_shell() -> None:
    stages = _parse_mode((MODES / "rus-ukr.mode").read_text("utf-8"))
    programs = [stage[0] for stage in stages]
    assert programs[:3] == ["lt-proc", "cg-proc", "apertium-tagger"]
    assert all("$" not in word for stage in stages for word in stage)
    generator = [stage for stage in stages if stage[-1].endswith("rus-ukr.autogen.bin")]
    assert generator == [
        ["lt-proc", "-n", str(APERTIUM_DATA / "apertium-rus-ukr/rus-ukr.autogen.bin")]
    ]


@pytest.mark.parametrize("shell", ["> /tmp/out", "; rm -rf x", "&& true", "$HOME"])
def test_a_mode_needing_a_shell_is_refused(tmp_path: Path, shell: str) -> None:
    (tmp_path / "modes").mkdir()
    (tmp_path / "modes" / "rus-ukr.mode").write_text(f"lt-proc -w x.bin {shell}\n")
    with pytest.raises(TranslatorUnavailable, match="cannot be used: it "):
        ApertiumTranslator(tmp_path).translate("Привет", "ru", "uk")


def _copy_mode(tmp_path: Path, name: str, edit: tuple[str, str]) -> Path:
    (tmp_path / "modes").mkdir()
    text = (MODES / f"{name}.mode").read_text("utf-8")
    assert edit[0] in text
    (tmp_path / "modes" / f"{name}.mode").write_text(text.replace(*edit))
    return tmp_path


def test_a_failing_tagger_gives_way_to_the_constraint_grammar(
    apertium: ApertiumTranslator, tmp_path: Path
) -> None:
    # The tagger cannot read its model: it fails on every sentence, so the
    # translation is made again without it, and is complete.
    data = _copy_mode(tmp_path, "rus-ukr", ("rus-ukr.prob", "missing.prob"))
    translator = ApertiumTranslator(data)
    with capture_logs() as logs:
        assert translator.translate("Сегодня хорошая погода.", "ru", "uk") == (
            "Сьогодні хороша погода."
        )
    assert [entry["event"] for entry in logs] == ["apertium_tagger_failed"]
    assert "apertium-tagger exited with status" in logs[0]["error"]


def test_a_failing_program_is_named(apertium: ApertiumTranslator, tmp_path: Path) -> None:
    data = _copy_mode(tmp_path, "ukr-rus", ("ukr-rus.automorf.bin", "missing.bin"))
    with pytest.raises(TranslatorUnavailable, match=r"Apertium ukr-rus failed: lt-proc exited"):
        ApertiumTranslator(data).translate("Дякую", "uk", "ru")


def test_a_pair_that_is_not_installed_is_named(
    apertium: ApertiumTranslator, tmp_path: Path
) -> None:
    with pytest.raises(TranslatorUnavailable) as caught:
        apertium.translate("Привет", "ru", "en")
    assert "no Apertium language pair rus-eng" in str(caught.value)
    assert "installed modes: rus-ukr, ukr-rus" in str(caught.value)
    with pytest.raises(TranslatorUnavailable) as none:
        ApertiumTranslator(tmp_path).translate("Привет", "ru", "uk")
    assert "installed modes: none" in str(none.value)
    assert "apt-get install apertium-rus-ukr" in str(none.value)
    assert not ApertiumTranslator(tmp_path).installed()


def test_without_the_programs_apertium_is_not_installed(
    apertium: ApertiumTranslator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not apertium.installed()
    with pytest.raises(TranslatorUnavailable, match=r"Apertium is not installed \(apt-get"):
        apertium.translate("Привет", "ru", "uk")


def test_a_translation_past_its_timeout_is_unavailable(apertium: ApertiumTranslator) -> None:
    with pytest.raises(TranslatorUnavailable, match="longer than the translation timeout"):
        ApertiumTranslator(timeout=0).translate("Привет", "ru", "uk")


# Choosing the engine ----------------------------------------------------------


def test_each_pair_goes_to_the_engine_that_has_it(apertium: ApertiumTranslator) -> None:
    chain = EngineChain([apertium, ArgosTranslator(fake_argos(("ru", "en"), ("ru", "uk")))])
    assert chain.name == "apertium, argos"
    ukrainian = machine_translate(chain, "Спасибо за помощь.", "ru", "uk")
    assert ukrainian is not None
    assert (ukrainian.text, ukrainian.engine) == ("Спасибі за допомогу.", "apertium")
    english = machine_translate(chain, "Спасибо", "ru", "en")
    assert english is not None
    assert (english.text, english.engine) == ("[ru>en] Спасибо", "argos")
    assert english.label == "Machine translation ru→en (argos)"
    with pytest.raises(TranslatorUnavailable) as caught:
        machine_translate(chain, "Thanks", "en", "uk")
    assert "apertium: no Apertium language pair eng-ukr" in str(caught.value)
    assert "argos: no Argos language model en→uk" in str(caught.value)


def _without_argos(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "argostranslate", None)
    monkeypatch.setitem(sys.modules, "argostranslate.translate", None)


def test_the_setting_chooses_the_engine(
    apertium: ApertiumTranslator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _without_argos(monkeypatch)
    assert configured_translator("off") is None
    assert isinstance(configured_translator("apertium"), ApertiumTranslator)
    assert isinstance(configured_translator("argos"), ArgosTranslator)
    auto = configured_translator("auto", timeout=5)
    assert isinstance(auto, ApertiumTranslator)
    assert auto.timeout == 5
    assert configured_translator("auto", apertium_data=tmp_path) is None  # neither installed
    with pytest.raises(ValueError, match="one of auto, apertium, argos, off"):
        configured_translator("google")
    config = Config(party="RU-GS", name="x", database="sqlite://")
    assert (config.translation_engine, config.translation_timeout) == ("auto", 30.0)
    assert isinstance(translator_for(config), ApertiumTranslator)
    config.translation_engine = "off"
    assert translator_for(config) is None


def test_the_translation_section_of_the_configuration() -> None:
    text = Config(party="RU-GS", name="x", database="sqlite://").to_toml()
    assert '[translation]\nengine = "auto"\ntimeout = 30.0' in text
    changed = Config.from_toml(
        text.replace('engine = "auto"', 'engine = "apertium"').replace("30.0", "5"), "t"
    )
    assert (changed.translation_engine, changed.translation_timeout) == ("apertium", 5.0)
    with pytest.raises(UsageError, match=r"translation\.engine in t must be one of auto"):
        Config.from_toml(text.replace('engine = "auto"', 'engine = "deepl"'), "t")
    with pytest.raises(UsageError, match=r"translation\.timeout in t must be positive"):
        Config.from_toml(text.replace("timeout = 30.0", "timeout = 0"), "t")
    old = text[: text.index("[translation]")]  # a file written before the setting
    assert Config.from_toml(old, "t").translation_engine == "auto"


# What the API and CLI give ----------------------------------------------------


def _text(text: str, lang: str, **extra: object) -> dict[str, object]:
    return {"id": "e1", "kind": "text", "lang": lang, "body": {"text": text}, **extra}


def test_a_stored_message_is_given_with_its_labelled_translation(
    apertium: ApertiumTranslator,
) -> None:
    answer = machine_translation_of(apertium, _text("Спасибо за помощь.", "ru"), "uk")
    assert answer == {
        "id": "e1",
        "lang": "uk",
        "original_lang": "ru",
        "machine_translation": {
            "label": "Machine translation ru→uk (apertium)",
            "text": "Спасибі за допомогу.",
            "source": "ru",
            "target": "uk",
            "engine": "apertium",
            "senders_words": False,
            "signed": False,
        },
        "untranslated": None,
    }


def test_what_is_not_machine_translated_says_why(apertium: ApertiumTranslator) -> None:
    same = machine_translation_of(apertium, _text("Привет", "ru-RU"), "ru")
    assert (same["machine_translation"], same["untranslated"]) == (None, None)
    form = machine_translation_of(apertium, {"id": "e2", "kind": "form", "lang": "en"}, "uk")
    assert "only free text" in form["untranslated"]
    bad = machine_translation_of(apertium, _text("Привет", "ru", verified=False), "uk")
    assert "does not verify" in bad["untranslated"]
    none = machine_translation_of(None, _text("Привет", "ru"), "uk")
    assert "no machine translation engine is installed" in none["untranslated"]
    missing = machine_translation_of(apertium, _text("Привет", "ru"), "en")
    assert missing["machine_translation"] is None
    assert "no Apertium language pair rus-eng" in missing["untranslated"]
