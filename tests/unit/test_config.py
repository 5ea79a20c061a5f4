"""Settings from the environment (the one place it is read)."""

from __future__ import annotations

import pytest

from service.config import DEFAULT_RETRY_SCHEDULE, ConfigError, Settings, is_loopback_host


def test_defaults_match_the_contract() -> None:
    s = Settings.from_env({})
    assert (s.host, s.port, str(s.data_dir)) == ("127.0.0.1", 8080, ".data")
    assert s.base_url == "http://127.0.0.1:8080"
    assert s.database_url is None
    assert s.api_tokens == ()
    assert s.krea_api_url == "https://api.krea.ai"
    assert s.fal_queue_url == "https://queue.fal.run"
    assert s.fal_jwks_url == "https://rest.alpha.fal.ai/.well-known/jwks.json"
    assert s.scenario_api_url == "https://api.cloud.scenario.com/v1"
    assert s.client_webhook_retry_schedule == DEFAULT_RETRY_SCHEDULE
    assert s.client_webhook_allow_private is False


def test_values_are_parsed() -> None:
    s = Settings.from_env({
        "API_TOKENS": " a-token , b-token,,", "HOST": "0.0.0.0", "PORT": "9000",
        "PUBLIC_BASE_URL": "https://jobs.example/", "CLIENT_WEBHOOK_RETRY_SCHEDULE": "1,2.5,10",
        "CLIENT_WEBHOOK_ALLOW_PRIVATE": "true", "SCENARIO_SDK_API_KEY": "k", "SCENARIO_SDK_API_SECRET": "s",
        "DATABASE_URL": "postgresql://u:p@db/x",
    })  # fmt: skip
    assert [t.get_secret_value() for t in s.api_tokens] == ["a-token", "b-token"]
    assert s.base_url == "https://jobs.example"
    assert s.client_webhook_retry_schedule == (1, 2.5, 10)
    assert s.client_webhook_allow_private is True
    assert s.database_url is not None and "p@" not in repr(s)  # secrets stay out of reprs


def test_an_open_api_on_a_public_address_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match="API_TOKENS is unset"):
        Settings.from_env({"HOST": "0.0.0.0"})
    assert Settings.from_env({"HOST": "::1"}).host == "::1"
    assert Settings.from_env({"HOST": "0.0.0.0", "API_TOKENS": "t"}).auth_required


@pytest.mark.parametrize(
    "env", [{"PORT": "http"}, {"PORT": "70000"}, {"CLIENT_WEBHOOK_RETRY_SCHEDULE": "5,x"}]
)
def test_bad_values_name_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="invalid configuration"):
        Settings.from_env(env)


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.8.9.1", True), ("localhost", True),
                                               ("::1", True), ("0.0.0.0", False), ("10.0.0.1", False), ("example.com", False)])  # fmt: skip
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
