"""What the deployed functions make of the environment the packaged template gives them.

``tests/integration/test_package.py`` checks that the template (``make package``)
hands every function ``OPENDEVELOP_HMAC_KEY_SECRET`` and
``OPENDEVELOP_RETENTION_DAYS``; these check, against moto and without packaging
anything, that the settings read them as the template means: the HMAC key from
Secrets Manager, the rows' retention in days.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from chalicelib import models
from chalicelib.settings import Settings, SettingsError


@pytest.fixture
def aws_env(tmp_path: Path) -> dict[str, str]:
    return {
        "OPENDEVELOP_STAGE": "prod",
        "OPENDEVELOP_AWS_ENDPOINT_URL": "none",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }


def test_the_api_reads_the_hmac_key_from_the_generated_secret(aws_env: dict[str, str]) -> None:
    with mock_aws():
        key = "k" * 20 + "generated-by-secrets-manager-0123456789"
        arn = boto3.client("secretsmanager", region_name="eu-west-1").create_secret(
            Name="opendevelop-prod/hmac-key", SecretString=key
        )["ARN"]

        settings = Settings.from_env({**aws_env, "OPENDEVELOP_HMAC_KEY_SECRET": arn})

    assert settings.hmac_key == key.encode()


def test_a_missing_secret_stops_the_start_naming_the_variable(aws_env: dict[str, str]) -> None:
    with mock_aws(), pytest.raises(SettingsError, match="^OPENDEVELOP_HMAC_KEY_SECRET: cannot read secret"):
        Settings.from_env({**aws_env, "OPENDEVELOP_HMAC_KEY_SECRET": "opendevelop-prod/nothing-here"})


def test_the_dispatcher_needs_no_hmac_key(aws_env: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match="^OPENDEVELOP_HMAC_KEY: required"):
        Settings.from_env(aws_env)
    assert Settings.from_env(aws_env, require_hmac_key=False).hmac_key == b""


def test_a_new_sandbox_expires_after_the_retention_days(aws_env: dict[str, str]) -> None:
    settings = Settings.from_env({**aws_env, "OPENDEVELOP_RETENTION_DAYS": "7"}, require_hmac_key=False)
    models.configure(settings)
    try:
        sandbox = models.Sandbox("ab" * 8, app_id="app", image="base", docker_image="x", cmd=["true"])
        assert sandbox.expires_at is not None
        assert abs(sandbox.expires_at - (models.utcnow() + timedelta(days=7))) < timedelta(seconds=5)
    finally:
        models.configure(Settings.from_env(aws_env, require_hmac_key=False))  # back to the default 30 days
