"""Deployable for real: `make package` makes one CloudFormation template, and it is sound.

    make package          # chalice package --stage prod --merge-template infra/aws/resources.yaml build/package
                          # then cfn-lint build/package/sam.yaml

The template is built once per module, without any AWS account (no credentials
in the environment), then read like an operator reviewing it would: lint clean,
uploads treated as binary, the tables exactly as ``chalicelib/models.py``
declares them, a private bucket, and policies that grant what each component
does and no more.  The Lambda bundle (``deployment.zip``) carries the API's code
and its runtime packages only: no dispatcher, no SSH bootstrap, no paramiko or
docker.  A real ``chalice package`` takes about half a minute, hence
integration; what the deployed functions make of the template's settings is
checked fast, against moto, in ``tests/functional/test_deployed_settings.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from chalicelib import models, playground

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(240)

SCALE_IN_FUNCTIONS = ("HostTerminating", "ScaleInSteps")  # app.host_terminating, app.scale_in_steps
TABLE_SUFFIXES = {model: model.Meta.suffix for model in models.MODELS}  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make package` into a folder of this test's own, with no AWS credentials anywhere."""
    out = tmp_path_factory.mktemp("package") / "build"
    home = out.parent / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OPENDEVELOP_"))}
    env.update(
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(home / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "no-aws-credentials"),
    )
    result = subprocess.run(
        ["make", "--no-print-directory", "package", f"PACKAGE_DIR={out}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert result.returncode == 0, f"make package failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def template(package: Path) -> dict[str, Any]:
    # Chalice writes the merged template with long-form intrinsics (`Ref:`), plain YAML.
    loaded: dict[str, Any] = yaml.safe_load((package / "sam.yaml").read_text())
    return loaded


def resources_of_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def test_the_package_is_the_lambda_bundle_and_one_template(package: Path) -> None:
    assert sorted(p.name for p in package.iterdir()) == ["deployment.zip", "sam.yaml"]


def test_the_lambda_bundle_carries_only_what_the_handlers_import(package: Path) -> None:
    """requirements.txt is the API's runtime alone; the dispatcher's and the admin tooling's stay out."""
    with zipfile.ZipFile(package / "deployment.zip") as bundle:
        names = bundle.namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert {"app.py", "chalicelib", "boto3", "botocore", "pynamodb", "multipart.py"} <= tops, sorted(tops)
    # The dispatcher and the SSH bootstrap, and paramiko's and docker's packages (dist-info too).
    absent = {"dispatcher", "infra", "paramiko", "docker", "invoke", "nacl", "pynacl", "bcrypt"}
    assert not [top for top in tops if top.split("-", 1)[0].lower() in absent], sorted(tops)
    hosts = [n for n in names if re.search(r"(^|/)hosts(\.py|/)", n)]
    assert not hosts, hosts
    # The playground page is package data the API reads at GET /.
    page = {f"chalicelib/playground/{f}" for f in ("index.html", "playground.css", *playground.SCRIPTS)}
    assert page <= set(names), sorted(page - set(names))


def test_cfn_lint_finds_nothing_in_the_packaged_template(package: Path) -> None:
    # `make package` lints too; this says so in the test report, with the findings if any.
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "cfn-lint"), str(package / "sam.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_cfn_lint_does_fail_on_a_broken_template(package: Path, tmp_path: Path) -> None:
    """The check above could fail: the same template with one wrong value does not pass."""
    broken = (package / "sam.yaml").read_text().replace("PAY_PER_REQUEST", "PAY_AS_YOU_GO", 1)
    (tmp_path / "broken.yaml").write_text(broken)
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "cfn-lint"), str(tmp_path / "broken.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "PAY_AS_YOU_GO" in result.stdout


def test_api_gateway_hands_multipart_uploads_over_as_binary(template: dict[str, Any]) -> None:
    (api,) = resources_of_type(template, "AWS::Serverless::Api").values()
    assert "multipart/form-data" in api["Properties"]["DefinitionBody"]["x-amazon-apigateway-binary-media-types"]


def test_the_tables_are_exactly_what_the_models_declare(template: dict[str, Any]) -> None:
    tables = resources_of_type(template, "AWS::DynamoDB::Table")
    by_name = {t["Properties"]["TableName"]["Fn::Sub"]: t["Properties"] for t in tables.values()}
    assert sorted(by_name) == sorted(f"${{TablePrefix}}-{s}" for s in TABLE_SUFFIXES.values())
    for model, suffix in TABLE_SUFFIXES.items():
        table = by_name[f"${{TablePrefix}}-{suffix}"]
        schema: Any = model._get_schema()  # what pynamodb would create
        assert table["BillingMode"] == "PAY_PER_REQUEST"
        assert _attrs(table["AttributeDefinitions"]) == _attrs(schema["attribute_definitions"]), suffix
        assert _keys(table["KeySchema"]) == _keys(schema["key_schema"]), suffix
        declared = {
            index["index_name"]: (_keys(index["key_schema"]), _projection(index["projection"]))
            for index in schema["global_secondary_indexes"]
        }
        in_template = {
            index["IndexName"]: (_keys(index["KeySchema"]), _projection(index["Projection"]))
            for index in table.get("GlobalSecondaryIndexes", [])
        }
        assert in_template == declared, suffix
        assert not schema["local_secondary_indexes"]
        assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}


def _attrs(definitions: list[dict[str, str]]) -> set[tuple[str, str]]:
    return {(d["AttributeName"], d["AttributeType"]) for d in definitions}


def _keys(schema: list[dict[str, str]]) -> list[tuple[str, str]]:
    return sorted((k["KeyType"], k["AttributeName"]) for k in schema)  # HASH before RANGE


def _projection(projection: dict[str, Any]) -> tuple[str, list[str]]:
    return projection["ProjectionType"], sorted(projection.get("NonKeyAttributes", []))


def test_old_sandboxes_expire_through_the_models_ttl_attribute(template: dict[str, Any]) -> None:
    sandboxes = template["Resources"]["SandboxesTable"]["Properties"]
    assert sandboxes["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert models.Sandbox.get_attributes()["expires_at"].attr_type == "N"  # DynamoDB's TTL needs epoch seconds


def test_the_bucket_is_private_encrypted_and_expires_sandbox_files(template: dict[str, Any]) -> None:
    bucket = template["Resources"]["FilesBucket"]["Properties"]
    assert "BucketName" not in bucket  # global names: CloudFormation picks a unique one
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    (lifecycle,) = bucket["LifecycleConfiguration"]["Rules"]
    assert lifecycle["Status"] == "Enabled" and lifecycle["Prefix"] == "sandboxes/"
    assert lifecycle["ExpirationInDays"] == {"Ref": "RetentionDays"}
    (deny,) = template["Resources"]["FilesBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_every_function_finds_its_tables_bucket_and_key_from_the_stack(template: dict[str, Any]) -> None:
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables == {
        "OPENDEVELOP_TABLE_PREFIX": {"Ref": "TablePrefix"},
        "OPENDEVELOP_BUCKET": {"Ref": "FilesBucket"},
        "OPENDEVELOP_HMAC_KEY_SECRET": {"Ref": "HmacKeySecret"},
        "OPENDEVELOP_RETENTION_DAYS": {"Ref": "RetentionDays"},
    }
    functions = resources_of_type(template, "AWS::Serverless::Function")
    assert "APIHandler" in functions
    for name, function in functions.items():
        props = function["Properties"]
        assert props["Environment"]["Variables"]["OPENDEVELOP_STAGE"] == "prod", name
        assert "OPENDEVELOP_HMAC_KEY" not in props["Environment"]["Variables"], name  # never a secret in config
        # The scale-in functions have a role of their own: the API's never deletes a queue.
        role = "ScaleInRole" if name in SCALE_IN_FUNCTIONS else "DefaultRole"
        assert props["Role"] == {"Fn::GetAtt": [role, "Arn"]}, name


def test_every_schedule_of_app_py_is_in_the_template(template: dict[str, Any]) -> None:
    """The reconciler's schedule comes from Chalice (``@app.schedule``), not from infra/aws."""
    schedules = (ROOT / "app.py").read_text().count("@app.schedule(")
    functions = resources_of_type(template, "AWS::Serverless::Function").values()
    events = [e for f in functions for e in (f["Properties"].get("Events") or {}).values() if e["Type"] == "Schedule"]
    assert len(events) == schedules


def test_the_webhooks_function_consumes_the_templates_webhooks_queue(template: dict[str, Any]) -> None:
    functions = resources_of_type(template, "AWS::Serverless::Function").values()
    (event,) = [e for f in functions for e in (f["Properties"].get("Events") or {}).values() if e["Type"] == "SQS"]
    queue = event["Properties"]["Queue"]
    queue_text = json.dumps(queue)
    default_prefix = template["Parameters"]["TablePrefix"]["Default"]
    assert queue_text.rstrip('"}').endswith(f":{default_prefix}-webhooks"), queue
    assert event["Properties"]["BatchSize"] == 1
    hooks = template["Resources"]["WebhooksQueue"]["Properties"]
    assert hooks["QueueName"] == {"Fn::Sub": "${TablePrefix}-webhooks"}
    assert int(hooks["VisibilityTimeout"]) > 30  # the function's timeout (.chalice/config.json, prod)


def _statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return list(policy["Statement"])


def _actions(statements: list[dict[str, Any]]) -> set[str]:
    out: set[str] = set()
    for s in statements:
        out.update([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    return out


def _resources_text(statements: list[dict[str, Any]]) -> str:
    return json.dumps([s["Resource"] for s in statements])


def test_the_api_role_may_do_what_the_api_does_and_no_more(template: dict[str, Any]) -> None:
    (policy,) = template["Resources"]["DefaultRole"]["Properties"]["Policies"]
    statements = _statements(policy["PolicyDocument"])
    assert all(s["Effect"] == "Allow" for s in statements)
    actions = _actions(statements)
    assert not [a for a in actions if "*" in a], actions
    assert all(s["Resource"] != "*" for s in statements)
    resources = _resources_text(statements)
    assert "UsersTable" not in resources  # the API never reads users
    assert actions >= {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query", "sqs:SendMessage"}
    assert actions >= {"s3:PutObject", "s3:GetObject", "secretsmanager:GetSecretValue"}
    assert not actions & {"sqs:CreateQueue", "sqs:DeleteQueue", "dynamodb:DeleteTable", "dynamodb:CreateTable"}
    # The reconciler reads dead letters, and only those: never a live queue's wake-ups.  The
    # webhooks function reads the webhooks queue (its event source), and nothing else.
    dead, webhooks = sorted(
        (s for s in statements if "sqs:ReceiveMessage" in s["Action"]), key=lambda s: "Fn::Sub" not in s["Resource"]
    )
    assert dead["Resource"]["Fn::Sub"].endswith("${TablePrefix}-server-*-dlq")
    assert webhooks["Resource"] == {"Fn::GetAtt": ["WebhooksQueue", "Arn"]}
    assert {"dynamodb:BatchGetItem", "dynamodb:BatchWriteItem"} <= actions  # ?ids= and batches


def test_the_dispatchers_policy_never_reaches_users_apps_or_the_key(template: dict[str, Any]) -> None:
    statements = _statements(template["Resources"]["DispatcherPolicy"]["Properties"]["PolicyDocument"])
    actions = _actions(statements)
    assert not [a for a in actions if "*" in a], actions
    resources = _resources_text(statements)
    for never in ("UsersTable", "AppsTable", "ImagesTable", "HmacKeySecret"):
        assert never not in resources
    assert "secretsmanager:GetSecretValue" not in actions
    assert {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"} <= actions
    assert "${TablePrefix}-server-*" in resources  # its servers' queues, by name prefix
    (hooks,) = [s for s in statements if s.get("Sid") == "Webhooks"]  # a settle queues a webhook, no more
    # Output in parts (aborted when a run does not complete it), live chunks deleted and, for a sandbox
    # tried before, listed under its own prefix only.
    assert {"s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListBucket"} <= actions
    (listed,) = [s for s in statements if "s3:ListBucket" in _actions([s])]
    assert listed["Condition"] == {"StringLike": {"s3:prefix": "sandboxes/*"}}
    assert sorted(_actions([hooks])) == ["sqs:GetQueueUrl", "sqs:SendMessage"]
    for holder in ("DispatcherRole", "DispatcherUser"):
        assert template["Resources"][holder]["Properties"]["ManagedPolicyArns"] == [{"Ref": "DispatcherPolicy"}]


def test_the_hmac_key_is_generated_by_secrets_manager_and_kept(template: dict[str, Any]) -> None:
    secret = template["Resources"]["HmacKeySecret"]
    assert secret["Properties"]["GenerateSecretString"]["PasswordLength"] >= 32
    assert secret["DeletionPolicy"] == "Retain"  # losing it would invalidate every app's secret


def test_docker_hosts_are_an_auto_scaling_group_with_imdsv2_and_a_scoped_profile(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    launch = resources["DockerHostLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert launch["MetadataOptions"] == {
        "HttpEndpoint": "enabled",
        "HttpTokens": "required",
        "HttpPutResponseHopLimit": 1,
    }
    user_data = json.dumps(launch["UserData"])
    for step in ("release", "host-setup.sh", "-m dispatcher --register-only", "OPENDEVELOP_SERVER=$ID"):
        assert step in user_data, step
    assert launch["IamInstanceProfile"] == {"Arn": {"Fn::GetAtt": ["DockerHostInstanceProfile", "Arn"]}}
    role = resources["DockerHostRole"]["Properties"]
    assert role["ManagedPolicyArns"] == [{"Ref": "DispatcherPolicy"}, {"Ref": "DockerHostPolicy"}]
    statements = _statements(resources["DockerHostPolicy"]["Properties"]["PolicyDocument"])
    actions = _actions(statements)
    assert actions == {
        "dynamodb:PutItem",
        "sqs:CreateQueue",
        "sqs:SetQueueAttributes",
        "sqs:GetQueueUrl",
        "sqs:GetQueueAttributes",
        "s3:GetObject",
    }
    for never in ("UsersTable", "AppsTable", "ImagesTable", "HmacKeySecret", "SandboxesTable"):
        assert never not in _resources_text(statements)
    group = resources["DockerHostGroup"]["Properties"]
    assert {group[k]["Ref"] for k in ("MinSize", "MaxSize", "DesiredCapacity")} == {
        "DockerHostsMin",
        "DockerHostsMax",
        "DockerHostsDesired",
    }
    (hook,) = group["LifecycleHookSpecificationList"]
    assert hook["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
    assert hook["HeartbeatTimeout"] > 60  # the steps run every minute and heartbeat it
    policy = resources["DockerHostScaling"]["Properties"]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    metric = policy["TargetTrackingConfiguration"]["CustomizedMetricSpecification"]
    assert (metric["Namespace"], metric["MetricName"]) == ("OpenDevelop", "BacklogPerFreeSlot")


def test_the_scale_in_functions_hear_the_group_and_may_retire_its_hosts_only(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    (event,) = resources["HostTerminating"]["Properties"]["Events"].values()
    pattern = event["Properties"]["Pattern"]
    assert pattern["source"] == ["aws.autoscaling"]
    assert pattern["detail-type"] == ["EC2 Instance-terminate Lifecycle Action"]
    assert pattern["detail"]["AutoScalingGroupName"] == [{"Fn::Sub": "${TablePrefix}-docker-hosts"}]
    (policy,) = resources["ScaleInRole"]["Properties"]["Policies"]
    statements = _statements(policy["PolicyDocument"])
    actions = _actions(statements)
    assert {"autoscaling:CompleteLifecycleAction", "autoscaling:RecordLifecycleActionHeartbeat"} <= actions
    assert {"sqs:DeleteQueue", "dynamodb:DeleteItem"} <= actions
    assert not [a for a in actions if "*" in a], actions
    (lifecycle,) = [s for s in statements if "autoscaling:CompleteLifecycleAction" in s["Action"]]
    assert "autoScalingGroupName/${TablePrefix}-docker-hosts" in lifecycle["Resource"]["Fn::Sub"]
