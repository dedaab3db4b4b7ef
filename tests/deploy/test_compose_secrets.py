"""compose.yaml hands the secret key (POSTROOM_SECRET_KEY_FILE) to the services that sign mail
(msa; mta, mda and dmarc for the mail they write, issue 21) and the operator CLI only, as a
Docker secret; the shared .env never holds it (issue 16)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.compose import (
    ENV_EXAMPLE,
    compose_config,
    load_compose,
    postroom_services,
    read_env_file,
    service_env,
)

SECRET = "postroom_secret_key"
# the operator's `docker compose run --rm cli dkim generate ...` seals new keys with it
HOLDERS = {"msa", "mta", "mda", "dmarc", "web", "migrate", "cli"}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compose_config(tmp_path_factory.mktemp("compose-secrets"))


def _secret_names(service: dict[str, Any]) -> set[str]:
    return {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}


def test_the_secret_key_is_a_file_secret(config):
    assert config["secrets"][SECRET]["file"].endswith("/secrets/postroom_secret_key")


def test_only_the_signing_services_and_the_cli_get_the_secret_key(config):
    holders = {name for name, svc in config["services"].items() if SECRET in _secret_names(svc)}
    assert holders == HOLDERS


@pytest.mark.parametrize("name", sorted(HOLDERS))
def test_holders_point_postroom_secret_key_file_at_the_mounted_secret(name):
    env = service_env(postroom_services(load_compose())[name], read_env_file(ENV_EXAMPLE))
    assert env["POSTROOM_SECRET_KEY_FILE"] == f"/run/secrets/{SECRET}"


def test_no_other_service_is_told_about_a_secret_key():
    dotenv = read_env_file(ENV_EXAMPLE)
    assert not any(k.startswith("POSTROOM_SECRET_") for k in dotenv)
    for name, service in postroom_services(load_compose()).items():
        if name not in HOLDERS:
            assert "POSTROOM_SECRET_KEY_FILE" not in service_env(service, dotenv), name
