"""Compose variables pass the unknown-setting check; `postroom config` shows effective values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from postroom.config import (
    NOT_SETTINGS,
    SPECS,
    ConfigError,
    describe_effective,
    effective,
    load_settings,
)
from postroom.ops.cli import main

REPO = Path(__file__).resolve().parents[2]
_INTERPOLATED = re.compile(r"\$\{(POSTROOM_[A-Z0-9_]+)")


def test_postroom_image_in_the_environment_is_not_an_unknown_setting():
    # what `env_file: .env` gives every service when .env sets the image compose runs
    settings = load_settings({"POSTROOM_IMAGE": "registry.example/postroom:1.2"})
    assert settings.hostname


def test_a_typo_is_still_refused():
    with pytest.raises(ConfigError, match=r"^POSTROOM_IMAGES: unknown setting"):
        load_settings({"POSTROOM_IMAGES": "x"})


def test_every_postroom_variable_compose_interpolates_is_a_setting_or_allowed():
    settings = {spec.env for spec in SPECS}
    files = [REPO / "compose.yaml", *sorted((REPO / "deploy").glob("*.yaml")),
             *sorted((REPO / "deploy").glob("*.yml"))]
    used = {name for f in files for name in _INTERPOLATED.findall(f.read_text())}
    assert "POSTROOM_IMAGE" in used
    stray = sorted(used - settings - set(NOT_SETTINGS))
    assert not stray, f"add these to postroom.config.NOT_SETTINGS or declare them: {stray}"


def test_not_settings_never_shadow_a_setting():
    assert not set(NOT_SETTINGS) & {spec.env for spec in SPECS}


def test_effective_marks_environment_file_and_default_and_hides_secrets(tmp_path):
    secret = tmp_path / "url"
    secret.write_text("postgresql://u:hunter2@db/postroom\n")
    env = {"POSTROOM_LOG_LEVEL": "debug", "POSTROOM_DATABASE_URL_FILE": str(secret),
           "POSTROOM_REDIS_URL": "redis://:s3cret@redis:6379/0"}
    rows = {r.env: r for r in effective(env)}
    assert (rows["POSTROOM_LOG_LEVEL"].shown, rows["POSTROOM_LOG_LEVEL"].source) == (
        "debug", "environment")
    assert rows["POSTROOM_SHUTDOWN_GRACE"].source == "default"
    assert rows["POSTROOM_SHUTDOWN_GRACE"].shown == "20s"
    assert rows["POSTROOM_DATABASE_URL"].source == "file"
    assert str(secret) in rows["POSTROOM_DATABASE_URL"].shown
    text = describe_effective({**env, "POSTROOM_IMAGE": "postroom:9"})
    assert "hunter2" not in text and "s3cret" not in text
    assert "(set, hidden)" in text
    assert re.search(r"POSTROOM_LOG_LEVEL\s+debug\s+\[environment\]", text)
    assert re.search(r"POSTROOM_IMAGE\s+postroom:9\s+\[not a setting", text)


def test_postroom_config_prints_effective_values(monkeypatch, capsys):
    monkeypatch.setenv("POSTROOM_LOG_LEVEL", "warning")
    monkeypatch.setenv("POSTROOM_IMAGE", "postroom:test")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"POSTROOM_LOG_LEVEL\s+warning\s+\[environment\]", out)
    assert re.search(r"POSTROOM_SHUTDOWN_GRACE\s+20s\s+\[default\]", out)
    assert main(["config", "--check"]) == 0
    assert main(["config", "--describe"]) == 0
    assert "default:" in capsys.readouterr().out
