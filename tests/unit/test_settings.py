"""Settings.from_env: defaults, overrides, and a message naming the variable for every bad value."""

from __future__ import annotations

import pytest

from chalicelib.settings import LOCAL_ENDPOINT, Settings, SettingsError

KEY = "k" * 32


def from_env(**env: str) -> Settings:
    return Settings.from_env({"OPENDEVELOP_HMAC_KEY": KEY, **env})


def test_the_local_stage_is_the_default_and_talks_to_the_local_stack():
    settings = from_env()

    assert settings.stage == "local"
    assert settings.aws_endpoint_url == LOCAL_ENDPOINT == "http://127.0.0.1:5000"
    assert (settings.aws_access_key_id, settings.aws_secret_access_key) == ("testing", "testing")
    assert (settings.table_prefix, settings.bucket) == ("opendevelop-local", "opendevelop-local-files")
    assert settings.region == "us-east-1"
    assert settings.hmac_key == KEY.encode()
    assert settings.max_upload_bytes == 10 * 1024 * 1024


def test_another_stage_uses_aws_itself():
    settings = from_env(OPENDEVELOP_STAGE="prod", AWS_REGION="eu-west-1")

    assert settings.aws_endpoint_url is None
    assert (settings.aws_access_key_id, settings.aws_secret_access_key) == (None, None)  # boto3's own chain
    assert (settings.table_prefix, settings.bucket) == ("opendevelop-prod", "opendevelop-prod-files")
    assert settings.boto_kwargs() == {"region_name": "eu-west-1"}


@pytest.mark.parametrize(
    ("env", "endpoint"),
    [
        ({"AWS_ENDPOINT_URL": "http://localhost:4566"}, "http://localhost:4566"),
        ({"OPENDEVELOP_AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL": "http://b:2"}, "http://a:1"),
        ({"OPENDEVELOP_AWS_ENDPOINT_URL": "none"}, None),
        ({"OPENDEVELOP_AWS_ENDPOINT_URL": "None", "AWS_ENDPOINT_URL": "http://b:2"}, None),
        ({"AWS_ENDPOINT_URL": ""}, LOCAL_ENDPOINT),  # empty is unset
    ],
)
def test_the_aws_endpoint(env, endpoint):
    settings = from_env(**env)

    assert settings.aws_endpoint_url == endpoint
    assert settings.boto_kwargs().get("endpoint_url") == endpoint


def test_none_passes_no_endpoint_so_boto3_finds_its_own():
    kwargs = from_env(OPENDEVELOP_AWS_ENDPOINT_URL="none").boto_kwargs()

    assert kwargs == {"region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def test_names_and_sizes_can_be_set():
    settings = from_env(
        OPENDEVELOP_STAGE="staging-2",
        OPENDEVELOP_TABLE_PREFIX="od-test",
        OPENDEVELOP_BUCKET="files",
        OPENDEVELOP_MAX_UPLOAD_BYTES="1024",
        AWS_DEFAULT_REGION="eu-central-1",
    )

    assert (settings.stage, settings.table_prefix, settings.bucket) == ("staging-2", "od-test", "files")
    assert (settings.max_upload_bytes, settings.region) == (1024, "eu-central-1")


def test_each_limit_has_a_default_and_a_ceiling_from_the_environment():
    settings = from_env(OPENDEVELOP_TIMEOUT_DEFAULT="5", OPENDEVELOP_TIMEOUT_MAX="120", OPENDEVELOP_CPUS_MAX="4.5")

    timeout = settings.limit("timeout")
    assert (timeout.default, timeout.ceiling, timeout.integer) == (5, 120, False)
    assert settings.limit("cpus").ceiling == 4.5
    assert settings.limit("memory_mb").default == 256 and settings.limit("memory_mb").integer


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"OPENDEVELOP_STAGE": "my stage"}, "OPENDEVELOP_STAGE"),
        ({"OPENDEVELOP_STAGE": "../prod"}, "OPENDEVELOP_STAGE"),
        ({"AWS_ENDPOINT_URL": "localhost:5000"}, "AWS_ENDPOINT_URL"),
        ({"OPENDEVELOP_AWS_ENDPOINT_URL": "127.0.0.1:5000"}, "OPENDEVELOP_AWS_ENDPOINT_URL"),
        ({"OPENDEVELOP_HMAC_KEY": "short"}, "OPENDEVELOP_HMAC_KEY"),
        ({"OPENDEVELOP_MAX_UPLOAD_BYTES": "ten"}, "OPENDEVELOP_MAX_UPLOAD_BYTES"),
        ({"OPENDEVELOP_MAX_UPLOAD_BYTES": "0"}, "OPENDEVELOP_MAX_UPLOAD_BYTES"),
        ({"OPENDEVELOP_MAX_UPLOAD_BYTES": "1.5"}, "OPENDEVELOP_MAX_UPLOAD_BYTES"),
        ({"OPENDEVELOP_MAX_FILES": "-1"}, "OPENDEVELOP_MAX_FILES"),
        ({"OPENDEVELOP_HEARTBEAT_TTL": "1"}, "OPENDEVELOP_HEARTBEAT_TTL"),
        ({"OPENDEVELOP_TIMEOUT_MAX": "nan"}, "OPENDEVELOP_TIMEOUT_MAX"),
        ({"OPENDEVELOP_CPUS_MAX": "inf"}, "OPENDEVELOP_CPUS_MAX"),
        ({"OPENDEVELOP_CPUS_DEFAULT": "one"}, "OPENDEVELOP_CPUS_DEFAULT"),
        ({"OPENDEVELOP_MEMORY_MB_MAX": "512.5"}, "OPENDEVELOP_MEMORY_MB_MAX"),
        ({"OPENDEVELOP_MEMORY_MB_DEFAULT": "8"}, "OPENDEVELOP_MEMORY_MB_DEFAULT"),
        ({"OPENDEVELOP_TIMEOUT_DEFAULT": "90"}, "OPENDEVELOP_TIMEOUT_DEFAULT"),  # above the ceiling of 60
    ],
)
def test_a_bad_value_fails_naming_the_variable(env, variable):
    with pytest.raises(SettingsError, match=f"^{variable}: "):
        from_env(**env)


def test_outside_the_local_stage_the_hmac_key_is_required():
    with pytest.raises(SettingsError, match="^OPENDEVELOP_HMAC_KEY: required"):
        Settings.from_env({"OPENDEVELOP_STAGE": "prod"})
