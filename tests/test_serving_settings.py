"""serving/settings.py: one typed settings object, read from DIGIT_COMPARE_* once, refusing what it does not know."""

from __future__ import annotations

import pytest

from serving import settings


@pytest.fixture(autouse=True)
def no_settings(monkeypatch):
    """Each test starts from an environment without DIGIT_COMPARE_* (and never probes for a GPU)."""
    import os

    for name in [n for n in os.environ if n.startswith(settings.PREFIX)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DIGIT_COMPARE_DEVICE", "cpu")


def test_every_field_is_read_from_its_variable_and_autos_are_resolved(monkeypatch):
    monkeypatch.setenv("DIGIT_COMPARE_MAX_PAIRS", "12")
    monkeypatch.setenv("DIGIT_COMPARE_ACCESS_LOG", "yes")
    monkeypatch.setenv("DIGIT_COMPARE_WORKERS", "3")
    monkeypatch.setenv("DIGIT_COMPARE_BODY_TIMEOUT_S", "2.5")
    loaded = settings.load()
    assert (loaded.max_pairs, loaded.access_log, loaded.workers, loaded.body_timeout_s) == (12, True, 3, 2.5)
    assert loaded.layout == "in_process"  # auto, on the CPU
    assert loaded.ort_spinning is False  # several workers in process: idle threads must not spin (docs/speed.md)


def test_an_empty_variable_is_the_default(monkeypatch):
    monkeypatch.setenv("DIGIT_COMPARE_MAX_PAIRS", "")
    assert settings.load().max_pairs == settings.Settings.model_fields["max_pairs"].default


def test_a_misspelt_variable_is_refused_naming_the_closest_setting(monkeypatch):
    monkeypatch.setenv("DIGIT_COMPARE_WORKER", "1")
    with pytest.raises(ValueError, match="unknown setting DIGIT_COMPARE_WORKER; did you mean DIGIT_COMPARE_WORKERS?"):
        settings.load()


def test_a_variable_like_no_setting_lists_them_all(monkeypatch):
    monkeypatch.setenv("DIGIT_COMPARE_COLOUR", "blue")
    with pytest.raises(ValueError) as refused:
        settings.load()
    assert "unknown setting DIGIT_COMPARE_COLOUR; the settings are DIGIT_COMPARE_MODELS," in str(refused.value)


@pytest.mark.parametrize("name, value", [("DIGIT_COMPARE_MAX_PAIRS", "ten"), ("DIGIT_COMPARE_MAX_PAIRS", "0"),
                                         ("DIGIT_COMPARE_BODY_TIMEOUT_S", "-1"), ("DIGIT_COMPARE_MODEL", "teacher")])
def test_a_bad_value_is_refused_naming_its_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"^{name}: "):
        settings.load()


def test_every_problem_is_said_at_once(monkeypatch):
    monkeypatch.setenv("DIGIT_COMPARE_WORKER", "1")
    monkeypatch.setenv("DIGIT_COMPARE_MAX_PAIRS", "ten")
    message = str(pytest.raises(ValueError, settings.load).value)
    assert "DIGIT_COMPARE_WORKER;" in message and "DIGIT_COMPARE_MAX_PAIRS: " in message


def test_info_reports_the_settings_in_force(monkeypatch):
    monkeypatch.setenv("DIGIT_COMPARE_MAX_BATCH_SIZE", "16")
    info = settings.describe(settings.load())
    assert info["batching"]["max_batch_size"] == 16 and info["layout"] == "in_process"
    assert info["limits"]["max_json_pairs_per_request"] == settings.JSON_MAX_PAIRS
