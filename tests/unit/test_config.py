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
    assert s.web_concurrency == 1


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


SERVER, BOUNCER = "postgresql://u:p@db/x", "postgresql://u:p@bouncer:6432/x"


@pytest.mark.parametrize(
    ("env", "pooled"),
    [
        ({}, False),
        ({"DATABASE_URL": SERVER}, False),
        ({"DATABASE_URL": SERVER, "DATABASE_LISTEN_URL": SERVER}, False),
        ({"DATABASE_URL": BOUNCER, "DATABASE_LISTEN_URL": SERVER}, True),
        ({"DATABASE_LISTEN_URL": SERVER}, False),  # the embedded server: no pooler
    ],
)
def test_a_listen_url_of_its_own_means_database_url_is_a_pooler(
    env: dict[str, str], pooled: bool
) -> None:
    assert Settings.from_env(env).database_pooled is pooled


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


def test_web_concurrency_is_a_process_count_from_1_to_64() -> None:
    assert Settings.from_env({"WEB_CONCURRENCY": "2"}).web_concurrency == 2
    assert Settings.from_env({"WEB_CONCURRENCY": "64"}).web_concurrency == 64
    for bad in ("0", "65", "-1", "two", "1.5"):
        with pytest.raises(ConfigError, match="WEB_CONCURRENCY must be a whole number"):
            Settings.from_env({"WEB_CONCURRENCY": bad})


def test_several_processes_need_a_fixed_port() -> None:
    with pytest.raises(ConfigError, match="needs a fixed PORT"):
        Settings.from_env({"WEB_CONCURRENCY": "2", "PORT": "0"})
    assert Settings.from_env({"WEB_CONCURRENCY": "1", "PORT": "0"}).port == 0


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.8.9.1", True), ("localhost", True),
                                               ("::1", True), ("0.0.0.0", False), ("10.0.0.1", False), ("example.com", False)])  # fmt: skip
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_archive_settings_default_to_a_folder_under_the_data_dir() -> None:
    s = Settings.from_env({"SERVICE_DATA_DIR": "/srv/imagejobs"})
    assert s.output_store == "file:///srv/imagejobs/outputs"
    assert (s.output_fetch_allow_private, s.output_max_bytes) == (False, 52_428_800)
    assert s.archive_lease_s == 60


def test_archive_settings_are_read() -> None:
    s = Settings.from_env({
        "OUTPUT_STORE_URL": "s3://bucket/some/prefix/", "OUTPUT_FETCH_ALLOW_PRIVATE": "true",
        "OUTPUT_MAX_BYTES": "1000", "AWS_ACCESS_KEY_ID": "AKIA-test", "AWS_SECRET_ACCESS_KEY": "shh",
        "AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "ARCHIVE_LEASE_S": "5", "OUTPUT_FETCH_ATTEMPTS": "2", "OUTPUT_FETCH_BACKOFF_S": "0.5",
    })  # fmt: skip
    assert s.output_store == "s3://bucket/some/prefix"
    assert (s.output_fetch_allow_private, s.output_max_bytes, s.archive_lease_s) == (True, 1000, 5)
    assert (s.output_fetch_attempts, s.output_fetch_backoff_s) == (2, 0.5)
    assert (s.aws_region, s.aws_endpoint_url) == ("eu-west-1", "http://127.0.0.1:9000")
    assert "shh" not in repr(s)
    assert Settings.from_env({"OUTPUT_STORE_URL": "none"}).output_store == "none"


@pytest.mark.parametrize("url", ["ftp://x/y", "file://relative/path", "s3://", "/plain/path"])
def test_an_unknown_output_store_refuses_to_start(url: str) -> None:
    with pytest.raises(ConfigError, match="output_store_url"):
        Settings.from_env({"OUTPUT_STORE_URL": url})


def test_shutdown_grace_is_read_and_bounded() -> None:
    assert Settings.from_env({}).shutdown_grace_s == 10
    assert Settings.from_env({"SHUTDOWN_GRACE_S": "2.5"}).shutdown_grace_s == 2.5
    assert Settings.from_env({"SHUTDOWN_GRACE_S": "0"}).shutdown_grace_s == 0  # cut at once
    for bad in ("-1", "soon", "3601"):
        with pytest.raises(ConfigError, match="shutdown_grace_s"):
            Settings.from_env({"SHUTDOWN_GRACE_S": bad})


ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "imagejobs"}, False),  # no endpoint: off
        (ENDPOINT, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "true"}, False),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "false"}, True),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}, False),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, True),
        # the traces' own protocol wins over the general one (which may be the metrics')
        (
            {**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
             "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"},
            True,
        ),
    ],
)  # fmt: skip
def test_tracing_is_on_when_opentelemetrys_variables_name_an_endpoint(
    env: dict[str, str], on: bool
) -> None:
    assert Settings.from_env(env).tracing is on


@pytest.mark.parametrize(
    "env",
    [
        {**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        {**ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
        {**ENDPOINT, "OTEL_TRACES_EXPORTER": "zipkin"},
    ],
)
def test_an_exporter_or_protocol_other_than_otlp_over_http_protobuf_is_refused(
    env: dict[str, str],
) -> None:
    with pytest.raises(ConfigError, match=r"only otlp|with http/protobuf only"):
        Settings.from_env(env)
