"""Static checks of template.yaml: least privilege, and what each function may touch."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"


class _Loader(yaml.SafeLoader):
    pass


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {suffix: value}


_Loader.add_multi_constructor("!", _tag)


def resources() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(), Loader=_Loader)["Resources"]


def statements(function: str) -> list[dict[str, Any]]:
    found = []
    for policy in resources()[function]["Properties"]["Policies"]:
        for statement in policy["Statement"]:
            if "If" in statement:
                statement = statement["If"][1]
            found.append(statement)
    return found


def actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return action if isinstance(action, list) else [action]


#: The only wildcards a declared policy may hold: every object under a prefix of a bucket.
ALLOWED_RESOURCE_WILDCARDS = {
    "${MetadataBucket.Arn}/quarantine/*",  # the enricher's quarantine objects
    "${MetadataBucket.Arn}/rules-state/*",  # the recording rules' aggregation ledger
    "${FailedBatchesBucket.Arn}/*",  # the on-failure destination's own bucket
}


def _branches(statement: Any) -> list[dict[str, Any]]:
    """Both branches of a statement under ``!If`` (without ``AWS::NoValue``), else the statement."""
    if isinstance(statement, dict) and set(statement) == {"If"}:
        found = []
        for branch in statement["If"][1:]:
            found.extend(_branches(branch))
        return found
    if statement == {"Ref": "AWS::NoValue"}:
        return []
    return [statement]


def declared_policies() -> list[tuple[str, dict[str, Any]]]:
    """(resource, statement) for every policy statement the template declares, whatever the resource."""
    found: list[tuple[str, dict[str, Any]]] = []
    for name, resource in resources().items():
        props = resource.get("Properties", {})
        documents: list[Any] = []
        if resource["Type"] == "AWS::Serverless::Function":
            documents.extend(p for p in props.get("Policies", []) if isinstance(p, dict) and "Statement" in p)
            assert all(isinstance(p, dict) and "Statement" in p for p in props.get("Policies", [])), (
                f"{name}: use inline statements (managed policies and policy templates cannot be checked)"
            )
        elif resource["Type"] == "AWS::IAM::Role":
            documents.extend(p["PolicyDocument"] for p in props.get("Policies", []))
            assert not props.get("ManagedPolicyArns"), f"{name}: managed policies cannot be checked"
        elif resource["Type"] in (
            "AWS::IAM::Policy",
            "AWS::IAM::ManagedPolicy",
            "AWS::SNS::TopicPolicy",
            "AWS::S3::BucketPolicy",
            "AWS::SQS::QueuePolicy",
        ):
            documents.append(props["PolicyDocument"])
        for document in documents:
            for statement in document["Statement"]:
                found.extend((name, branch) for branch in _branches(statement))
    return found


def _strings(value: Any) -> list[str]:
    """The literal text of a resource: a string, the template of a ``!Sub``, or ``!Join`` parts."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    if isinstance(value, dict) and "Sub" in value:
        sub = value["Sub"]
        return _strings(sub if isinstance(sub, str) else sub[0])
    if isinstance(value, dict) and "Join" in value:
        return ["".join(t for item in value["Join"][1] for t in _strings(item))]
    return []


def test_no_declared_policy_has_a_wildcard_action_or_resource() -> None:
    found = declared_policies()
    names = {name for name, _ in found}
    assert {"EnricherFunction", "SelfManagedEnricherFunction", "MetadataRefreshFunction"} <= names
    for name, statement in found:
        assert statement["Effect"] == "Allow", (name, statement)
        assert "NotAction" not in statement and "NotResource" not in statement, (name, statement)
        assert all("*" not in a for a in actions(statement)), (name, statement)
        for text in _strings(statement["Resource"]):
            assert "*" not in text or text in ALLOWED_RESOURCE_WILDCARDS, (name, text)


def test_the_wildcard_check_catches_wildcards() -> None:
    bad = [
        {"Effect": "Allow", "Action": "s3:*", "Resource": {"Sub": "${MetadataBucket.Arn}/x"}},
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"},
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": {"Sub": "${MetadataBucket.Arn}/*"}},
        {"Effect": "Allow", "Action": "kafka-cluster:ReadData", "Resource": {"Join": ["", ["arn:", "*"]]}},
    ]
    for statement in bad:
        wildcard_action = any("*" in a for a in actions(statement))
        wildcard_resource = any(
            "*" in t and t not in ALLOWED_RESOURCE_WILDCARDS for t in _strings(statement["Resource"])
        )
        assert wildcard_action or wildcard_resource, statement


def test_no_wildcard_actions_or_resources() -> None:
    for name in ("EnricherFunction", "SelfManagedEnricherFunction", "MetadataRefreshFunction"):
        for statement in statements(name):
            assert all("*" not in a for a in actions(statement)), (name, statement)
            resource = statement["Resource"]
            assert resource != "*", (name, statement)


def test_only_the_refresh_function_writes_the_snapshot() -> None:
    for name in ("EnricherFunction", "SelfManagedEnricherFunction"):
        by_sid = {s["Sid"]: s for s in statements(name)}
        # the tag: when a refresh last listed the snapshot's content (SnapshotAge)
        assert actions(by_sid["ReadSnapshot"]) == ["s3:GetObject", "s3:GetObjectTagging"]
        assert by_sid["ReadSnapshot"]["Resource"] == {"Sub": "${MetadataBucket.Arn}/${MetadataKey}"}
        assert by_sid["WriteQuarantine"]["Resource"] == {"Sub": "${MetadataBucket.Arn}/quarantine/*"}
        writes = [s for s in statements(name) if "s3:PutObject" in actions(s)]
        assert [s["Sid"] for s in writes] == ["WriteQuarantine", "RulesLedger", "WriteFailedBatches"]
        # the recording rules' aggregation ledger: its own prefix of the metadata bucket, never the snapshot
        assert by_sid["RulesLedger"]["Resource"] == {"Sub": "${MetadataBucket.Arn}/rules-state/*"}
        assert by_sid["WriteFailedBatches"]["Resource"] == [
            {"GetAtt": "FailedBatchesBucket.Arn"},
            {"Sub": "${FailedBatchesBucket.Arn}/*"},
        ]
    refresh = {s["Sid"]: s for s in statements("MetadataRefreshFunction")}
    assert sorted(actions(refresh["ReadAndWriteSnapshot"])) == [
        "s3:GetObject",
        "s3:PutObject",
        "s3:PutObjectTagging",
    ]
    assert refresh["ReadAndWriteSnapshot"]["Resource"] == {"Sub": "${MetadataBucket.Arn}/${MetadataKey}"}


def test_partial_responses_and_on_failure_destination_are_options() -> None:
    for name, event in (("EnricherFunction", "Msk"), ("SelfManagedEnricherFunction", "SelfManagedKafka")):
        props = resources()[name]["Properties"]["Events"][event]["Properties"]
        assert props["FunctionResponseTypes"] == {
            "If": ["UsePartialResponses", ["ReportBatchItemFailures"], {"Ref": "AWS::NoValue"}]
        }
        assert props["DestinationConfig"]["OnFailure"]["Destination"]["If"][0] == "UseOnFailureDestination"


def test_the_refresh_function_runs_on_a_schedule_parameter() -> None:
    events = resources()["MetadataRefreshFunction"]["Properties"]["Events"]
    assert events["Refresh"]["Type"] == "ScheduleV2"
    assert events["Refresh"]["Properties"]["ScheduleExpression"] == {"Ref": "RefreshSchedule"}


def test_secrets_are_references_not_plain_parameters() -> None:
    params = yaml.load(TEMPLATE.read_text(), Loader=_Loader)["Parameters"]
    assert not any(name in params for name in ("InfluxToken", "InfluxPassword", "CfClientSecret"))
    assert "InfluxTokenSecretArn" in params and "CfClientSecretArn" in params


# -------------------------------------------------------------------------- operations (issue 6)


def _template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(), Loader=_Loader)


def _emitted(name: str) -> bool:
    from refinery.observability import ENRICHER_METRICS, METRIC_FAMILIES, REFRESH_METRICS

    prefix = name.split(".", 1)[0]
    return name in ENRICHER_METRICS or name in REFRESH_METRICS or ("." in name and prefix in METRIC_FAMILIES)


def test_tracing_log_level_and_namespace_are_parameters() -> None:
    template = _template()
    function = template["Globals"]["Function"]
    assert function["Tracing"] == {"If": ["UseActiveTracing", "Active", "PassThrough"]}
    env = function["Environment"]["Variables"]
    assert env["POWERTOOLS_TRACE_DISABLED"] == {"If": ["UseActiveTracing", "false", "true"]}
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == {"Ref": "MetricsNamespace"}
    assert env["POWERTOOLS_LOG_LEVEL"] == {"Ref": "LogLevel"}
    assert template["Parameters"]["ActiveTracing"]["Default"] == "false"


def test_alarms_cover_errors_lag_quarantine_snapshot_age_and_refresh_failures() -> None:
    alarms = {n: r for n, r in resources().items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    watched = set()
    for alarm in alarms.values():
        namespace = alarm["Properties"]["Namespace"]
        watched.add(
            (namespace if isinstance(namespace, str) else "custom", alarm["Properties"]["MetricName"])
        )
    assert watched == {
        ("AWS/Lambda", "Errors"),
        ("AWS/Lambda", "OffsetLag"),
        ("custom", "RecordsQuarantined"),
        ("custom", "Quarantined.destination_unavailable"),  # tenant routing (sinks/routed.py)
        ("custom", "SnapshotAge"),
        ("custom", "RefreshFailures"),
    }
    errors = [
        str(a["Properties"]["Dimensions"][0]["Value"])
        for a in alarms.values()
        if a["Properties"]["MetricName"] == "Errors"
    ]
    assert any("MetadataRefreshFunction" in e for e in errors)
    assert any("EnricherFunction" in e and "SelfManagedEnricherFunction" in e for e in errors)
    for name, alarm in alarms.items():
        props = alarm["Properties"]
        if props["Namespace"] == {"Ref": "MetricsNamespace"}:
            assert _emitted(props["MetricName"]), name
            assert props["Dimensions"] == [{"Name": "service", "Value": "refinery"}], name
        # notifications only when an e-mail address is given
        for key in ("AlarmActions", "OKActions"):
            assert props[key] == {
                "If": ["HasNotificationEmail", [{"Ref": "AlarmTopic"}], {"Ref": "AWS::NoValue"}]
            }, name
    snapshot = alarms["SnapshotAgeAlarm"]["Properties"]
    assert snapshot["Threshold"] == {"Ref": "SnapshotAgeAlarmSeconds"}
    assert _template()["Parameters"]["SnapshotAgeAlarmSeconds"]["Default"] == 1800  # 3 x rate(10 minutes)
    topic = resources()["AlarmTopic"]
    assert topic["Condition"] == "HasNotificationEmail"
    assert topic["Properties"]["Subscription"] == [
        {"Protocol": "email", "Endpoint": {"Ref": "NotificationEmail"}}
    ]


def _dashboard() -> dict[str, Any]:
    import json
    import re

    body, variables = resources()["Dashboard"]["Properties"]["DashboardBody"]["Sub"]
    assert set(re.findall(r"\$\{([^}]+)\}", body)) == {*variables, "AWS::Region"}
    values = {"Namespace": "Refinery", "Enricher": "enricher-fn", "Refresh": "refresh-fn"}
    values |= {"SnapshotAgeLimit": "1800", "AWS::Region": "us-east-1"}
    return json.loads(re.sub(r"\$\{([^}]+)\}", lambda m: values[m.group(1)], body))


def test_the_dashboard_shows_the_key_metrics_by_the_names_the_code_emits() -> None:
    widgets = _dashboard()["widgets"]
    shown: set[str] = set()
    searches: list[str] = []
    for widget in widgets:
        if widget["type"] != "metric":
            continue
        for row in widget["properties"]["metrics"]:
            if isinstance(row[0], dict):
                searches.append(row[0]["expression"])
                continue
            namespace, name, *dims = [x for x in row if not isinstance(x, dict)]
            if namespace == "Refinery":
                assert _emitted(name), name
                assert dims == ["service", "refinery"], (name, dims)  # no per-app dimension
                shown.add(name)
            else:
                assert namespace == "AWS/Lambda" and dims[0] == "FunctionName", row
                shown.add(f"AWS/Lambda:{name}")
    assert {
        "RecordsIn",
        "PointsWritten",
        "RecordsDropped",
        "RecordsQuarantined",
        "EnrichmentMisses",
        "HitRatio.cache",
        "HitRatio.snapshot",
        "SinkSeconds",
        "SinkRetries",
        "BatchLag",
        "SnapshotAge",
        "BatchFailures",
        "RefreshApps",
        "RefreshPages",
        "RefreshSeconds",
        "RefreshFailures",
        "AWS/Lambda:OffsetLag",
        "AWS/Lambda:Errors",
    } <= shown
    assert any("MetricName=Quarantined" in s for s in searches)
    assert any("MetricName=Dropped" in s for s in searches)
    queries = [w["properties"]["query"] for w in widgets if w["type"] == "log"]
    assert any('"batch done"' in q and "summary.records_in" in q for q in queries)


def test_the_translated_template_attaches_only_known_managed_policies_and_no_wildcards(
    monkeypatch: Any,
) -> None:
    """What SAM generates too: its inline policies have no wildcard; managed ones are AWS's own."""
    from samtranslator.translator.transform import transform
    from samtranslator.yaml_helper import yaml_parse

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    template = yaml_parse(TEMPLATE.read_text())
    for resource in template["Resources"].values():
        for key in ("CodeUri", "ContentUri"):
            if key in resource.get("Properties", {}):
                resource["Properties"][key] = "s3://bucket/key"

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    translated = transform(template, {}, NoManagedPolicies())
    managed: set[str] = set()
    for name, resource in translated["Resources"].items():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        managed.update(arn.rsplit("/", 1)[-1] for arn in resource["Properties"].get("ManagedPolicyArns", []))
        for policy in resource["Properties"].get("Policies", []):
            for statement in policy["PolicyDocument"]["Statement"]:
                for branch in _branches(
                    {"If": statement["Fn::If"]}
                    if isinstance(statement, dict) and "Fn::If" in statement
                    else statement
                ):
                    assert all("*" not in a for a in actions(branch)), (name, branch)
                    resource_text = [str(branch["Resource"])] if isinstance(branch["Resource"], str) else []
                    assert "*" not in resource_text, (name, branch)
    # Lambda's logs, X-Ray writes (Tracing is a parameter), the optional VPC, and the MSK poller's
    # describe/ENI actions: AWS-managed policies whose actions have no resource-level permissions.
    assert managed <= {
        "AWSLambdaBasicExecutionRole",
        "AWSXrayWriteOnlyAccess",
        "AWSLambdaVPCAccessExecutionRole",
        "AWSLambdaMSKExecutionRole",
    }, managed


# ------------------------------------------------------ issue 15: schedule name, lifecycle, CA bundles


def _translated(parameters: dict[str, Any] | None = None, monkeypatch: Any = None) -> dict[str, Any]:
    """The template as SAM translates it (what CloudFormation receives), code locations faked."""
    from samtranslator.translator.transform import transform
    from samtranslator.yaml_helper import yaml_parse

    template = yaml_parse(TEMPLATE.read_text())
    for resource in template["Resources"].values():
        for key in ("CodeUri", "ContentUri"):
            if key in resource.get("Properties", {}):
                resource["Properties"][key] = "s3://bucket/key"

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    return transform(template, parameters or {}, NoManagedPolicies())


def test_the_refresh_schedule_has_no_fixed_name_so_two_stacks_can_share_an_account(monkeypatch: Any) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    translated = _translated()
    schedules = {n: r for n, r in translated["Resources"].items() if r["Type"] == "AWS::Scheduler::Schedule"}
    assert list(schedules) == ["MetadataRefreshFunctionRefresh"]
    props = schedules["MetadataRefreshFunctionRefresh"]["Properties"]
    assert "Name" not in props  # CloudFormation then names it <stack>-MetadataRefreshFunctionRefresh-<id>
    assert props["ScheduleExpression"] == {"Ref": "RefreshSchedule"}
    for name, resource in translated["Resources"].items():  # and nothing else has a fixed name
        if resource["Type"] == "AWS::Lambda::Alias":
            continue  # "live" (AutoPublishAlias): an alias's name is its function's, not the account's
        fixed = {k: v for k, v in resource.get("Properties", {}).items() if k.endswith("Name")}
        for key, value in fixed.items():
            if key in ("FunctionName", "DashboardName", "RoleName", "BucketName", "TopicName", "Name"):
                assert not isinstance(value, str), (name, key, value)


def test_the_metadata_bucket_expires_old_versions_and_optionally_the_quarantine(monkeypatch: Any) -> None:
    template = _template()
    assert template["Parameters"]["NoncurrentVersionExpirationDays"]["Default"] == 30
    assert template["Parameters"]["QuarantineExpirationDays"]["Default"] == 0
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    translated = _translated()
    bucket = translated["Resources"]["MetadataBucket"]["Properties"]
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    noncurrent, quarantine = bucket["LifecycleConfiguration"]["Rules"]
    assert noncurrent == {
        "Id": "ExpireNoncurrentVersions",
        "Status": "Enabled",
        "NoncurrentVersionExpiration": {"NoncurrentDays": {"Ref": "NoncurrentVersionExpirationDays"}},
        "ExpiredObjectDeleteMarker": True,
    }
    assert quarantine == {
        "Fn::If": [
            "HasQuarantineExpiration",
            {
                "Id": "ExpireQuarantine",
                "Status": "Enabled",
                "Prefix": "quarantine/",
                "ExpirationInDays": {"Ref": "QuarantineExpirationDays"},
            },
            {"Ref": "AWS::NoValue"},
        ]
    }
    assert translated["Conditions"]["HasQuarantineExpiration"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "QuarantineExpirationDays"}, "0"]}]
    }
    # the enricher writes quarantine objects under the prefix the rule expires
    enricher = {s["Sid"]: s for s in statements("EnricherFunction")}
    assert enricher["WriteQuarantine"]["Resource"] == {"Sub": "${MetadataBucket.Arn}/quarantine/*"}


def test_ca_bundles_are_parameters_a_path_or_a_secret_the_functions_may_read() -> None:
    template = _template()
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    for prefix, parameter in (("CF", "CfCaBundle"), ("INFLUX", "InfluxCaBundle"), ("PROM", "PromCaBundle")):
        assert template["Parameters"][parameter]["Default"] == ""
        condition = f"{parameter}IsSecret"
        assert template["Conditions"][condition] == {
            "Equals": [{"Select": [0, {"Split": [":", {"Ref": parameter}]}]}, "arn"]
        }
        assert env[f"{prefix}_CA_BUNDLE"] == {"If": [condition, "", {"Ref": parameter}]}
        assert env[f"{prefix}_CA_BUNDLE_SECRET"] == {"If": [condition, {"Ref": parameter}, ""]}
        readers = ["EnricherFunction", "SelfManagedEnricherFunction"]
        readers += ["MetadataRefreshFunction"] if prefix == "CF" else []
        sid = f"Read{parameter}"
        for function in readers:
            policy = resources()[function]["Properties"]["Policies"][0]["Statement"]
            (guarded,) = [st["If"] for st in policy if "If" in st and st["If"][1].get("Sid") == sid]
            assert guarded[0] == condition
            assert guarded[1]["Action"] == "secretsmanager:GetSecretValue"
            assert guarded[1]["Resource"] == {"Ref": parameter}
            assert guarded[2] == {"Ref": "AWS::NoValue"}


def test_every_ca_bundle_setting_is_passed_to_the_functions() -> None:
    from refinery.config import SETTINGS

    env = _template()["Globals"]["Function"]["Environment"]["Variables"]
    bundles = [s.name for s in SETTINGS if s.name.endswith("_CA_BUNDLE")]
    assert sorted(bundles) == ["CF_CA_BUNDLE", "INFLUX_CA_BUNDLE", "PROM_CA_BUNDLE"]
    assert all(name in env and f"{name}_SECRET" in env for name in bundles)


# ------------------------------------------------- issue 18: every setting on a deployed stack


#: Settings that have no use on a deployed function, hence no parameter: each with the reason.
LOCAL_ONLY = {
    "METADATA_FILE": "a local snapshot file instead of S3 (local runs and tests); a deployed enricher "
    "reads the stack's METADATA_BUCKET, and the two together are refused",
    "QUARANTINE_DIR": "a local directory used only when no quarantine bucket is set; a deployed "
    "function always has one (QUARANTINE_BUCKET, below)",
}

#: Settings the template sets to a fixed value instead of a parameter: what the functions' policies
#: (WriteQuarantine, ReadRules) and the quarantine lifecycle rule are scoped to (README: Settings).
FIXED = {
    "METADATA_BUCKET": "<MetadataBucket>",  # the bucket the stack creates
    "QUARANTINE_BUCKET": "<MetadataBucket>",
    "QUARANTINE_PREFIX": "quarantine/",
    "RULES_BUCKET": "<MetadataBucket>",
}

#: Read only by the metadata-refresh function.
REFRESH_ONLY = {"MAX_APP_LOSS", "REFRESH_FORCE"}

ENRICHERS = ("EnricherFunction", "SelfManagedEnricherFunction")

#: The parameters without a default, with values that pass the settings' validation.
REQUIRED_VALUES = {
    "InfluxUrl": "https://influxdb.example.com:8086",
    "CfApiUrl": "https://api.sys.example.com",
    "CfClientSecretArn": "arn:aws:secretsmanager:us-east-1:000000000000:secret:cf",
}

_NO_VALUE = object()


def _refresh_reads(name: str) -> bool:
    from refinery.config import SETTINGS_BY_NAME

    return SETTINGS_BY_NAME[name].group == "cf" or name in ("METADATA_BUCKET", "METADATA_KEY")


def _resolve(value: Any, params: dict[str, str], conditions: dict[str, Any]) -> Any:
    """An environment value as CloudFormation would resolve it (``_NO_VALUE`` for ``AWS::NoValue``);
    a resource's Ref or attribute resolves to ``<Name>``."""
    if isinstance(value, (str, int, float)):
        return str(value)
    if isinstance(value, list):
        return [v for v in (_resolve(x, params, conditions) for x in value) if v is not _NO_VALUE]
    ((key, arg),) = value.items()
    if key == "Ref":
        if arg == "AWS::NoValue":
            return _NO_VALUE
        return params.get(arg, f"<{arg}>")
    if key == "Fn::GetAtt":
        return f"<{arg if isinstance(arg, str) else '.'.join(arg)}>"
    if key == "Condition":
        return _resolve(conditions[arg], params, conditions)
    if key == "Fn::If":
        taken = arg[1] if _resolve(conditions[arg[0]], params, conditions) else arg[2]
        return _resolve(taken, params, conditions)
    if key == "Fn::Equals":
        left, right = (_resolve(x, params, conditions) for x in arg)
        return left == right
    if key == "Fn::Not":
        return not _resolve(arg[0], params, conditions)
    if key == "Fn::And":
        return all(_resolve(x, params, conditions) for x in arg)
    if key == "Fn::Or":
        return any(_resolve(x, params, conditions) for x in arg)
    if key == "Fn::Join":
        items = _resolve(arg[1], params, conditions)
        return arg[0].join(items if isinstance(items, list) else [items])
    if key == "Fn::Split":
        return _resolve(arg[1], params, conditions).split(arg[0])
    if key == "Fn::Select":
        return _resolve(arg[1], params, conditions)[int(arg[0])]
    raise AssertionError(f"unexpected intrinsic {key} in an environment variable")


@functools.cache
def _translated_once() -> dict[str, Any]:
    """:func:`_translated` with the default parameters, once per session."""
    import os

    saved = os.environ.get("AWS_DEFAULT_REGION")
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    try:
        return _translated()
    finally:
        if saved is None:
            del os.environ["AWS_DEFAULT_REGION"]
        else:
            os.environ["AWS_DEFAULT_REGION"] = saved


def _environment(function: str, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """A translated function's environment for the given parameters (the rest at their defaults)."""
    translated = _translated_once()
    params = {name: str(p.get("Default", "")) for name, p in translated["Parameters"].items()}
    params |= REQUIRED_VALUES | (overrides or {})
    variables = translated["Resources"][function]["Properties"]["Environment"]["Variables"]
    resolved = {name: _resolve(value, params, translated["Conditions"]) for name, value in variables.items()}
    return {name: value for name, value in resolved.items() if value is not _NO_VALUE}


def _variables(name: str) -> list[str]:
    """The variables that carry a setting: itself, and for a secret its references too."""
    from refinery.config import SETTINGS_BY_NAME

    return [name, f"{name}_SECRET", f"{name}_PARAMETER"] if SETTINGS_BY_NAME[name].secret else [name]


def _sample(parameter: dict[str, Any]) -> str:
    """A value of a parameter other than its default."""
    if "AllowedValues" in parameter:
        return next(str(v) for v in parameter["AllowedValues"] if str(v) != str(parameter.get("Default")))
    if parameter["Type"] == "Number":
        return str(int(parameter.get("MinValue", 0)) + 7)
    return "sample-value"


def _parameters_of(function: str, variable: str) -> set[str]:
    """The template parameters a translated function's variable is computed from."""
    found: set[str] = set()
    names = set(_translated_once()["Parameters"])

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if value.get("Ref") in names:
                found.add(value["Ref"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(_translated_once()["Resources"][function]["Properties"]["Environment"]["Variables"].get(variable))
    return found


def test_every_setting_reaches_the_functions_environment_through_a_parameter() -> None:
    """Each setting of the settings table, set by its parameter, arrives in the environment of every
    function that reads it (enricher settings: both enrichers; refresh settings: the refresh)."""
    from refinery.config import SETTINGS

    template = _template()
    covered: set[str] = set()
    for setting in SETTINGS:
        if setting.name in LOCAL_ONLY:
            continue
        functions = [] if setting.name in REFRESH_ONLY else list(ENRICHERS)
        functions += ["MetadataRefreshFunction"] if _refresh_reads(setting.name) else []
        for function in functions:
            defaults = _environment(function)
            if setting.name in FIXED:
                assert defaults[setting.name] == FIXED[setting.name], (function, setting.name)
                covered.add(setting.name)
                continue
            variables = _variables(setting.name)
            parameters = {p for v in variables for p in _parameters_of(function, v)}
            assert parameters, f"{function}: no parameter sets {setting.name}"
            for parameter in parameters:
                value = _sample(template["Parameters"][parameter])
                env = _environment(function, {parameter: value})
                assert any(env.get(v) == value for v in variables), (function, setting.name, parameter)
            covered.add(setting.name)
    assert covered == {s.name for s in SETTINGS} - set(LOCAL_ONLY)
    assert len(template["Parameters"]) <= 200  # CloudFormation's limit per template


def test_an_unset_optional_parameter_leaves_its_variable_unset() -> None:
    """With every parameter at its default, a variable holding "" is one its setting reads as unset
    ("" is the setting's default, or parses to nothing); the others are not set at all, so the
    setting's own default applies (an empty FILTER_* would otherwise match only empty names)."""
    from refinery.config import SETTINGS_BY_NAME

    for function in (*ENRICHERS, "MetadataRefreshFunction"):
        for variable, value in _environment(function).items():
            setting = SETTINGS_BY_NAME.get(variable)
            if value != "" or setting is None or setting.secret:
                continue
            assert setting.default is not None or not setting.parse(""), (function, variable)
        assert not any(v.startswith("FILTER_") for v in _environment(function)), function


def test_the_functions_load_their_settings_with_the_template_defaults() -> None:
    from refinery.config import load_enricher_config, load_refresh_config

    def resolver(setting: str, kind: str, reference: str) -> str:
        return "from-" + reference

    for function in ENRICHERS:
        env = _environment(function, {"InfluxOrg": "o", "InfluxBucket": "b", "InfluxTokenSecretArn": "arn:t"})
        config = load_enricher_config(env, resolver=resolver)
        assert config.influx is not None and config.influx.token == "from-arn:t"
        assert config.quarantine_bucket == "<MetadataBucket>" and config.point_filter is None
    refresh = load_refresh_config(_environment("MetadataRefreshFunction"), resolver=resolver)
    assert refresh.cf.api_url and refresh.max_app_loss == 0.5 and refresh.refresh_force is False


def test_every_environment_fits_lambdas_4_kb_with_every_parameter_given() -> None:
    """Lambda refuses more than 4 KB of environment (names and values). Every parameter given, secrets
    and CA bundles as 100-character ARNs and other strings 40 characters long, it still fits."""
    template = _template()
    values: dict[str, str] = {}
    for name, parameter in template["Parameters"].items():
        if "AllowedValues" in parameter:
            values[name] = max((str(v) for v in parameter["AllowedValues"]), key=len)
        elif parameter["Type"] == "Number":
            values[name] = str(parameter.get("MaxValue", 1_000_000))
        elif name.endswith("Arn") or name.endswith("CaBundle"):
            values[name] = "arn:aws:secretsmanager:eu-central-1:123456789012:secret:" + "x" * 43
        else:
            values[name] = "x" * 40
    for function in (*ENRICHERS, "MetadataRefreshFunction"):
        env = _environment(function, values)
        size = sum(len(k) + len(v) for k, v in env.items())
        assert size <= 4096, (function, size)


def test_every_parameter_is_in_one_group_and_labels_name_parameters() -> None:
    template = _template()
    interface = template["Metadata"]["AWS::CloudFormation::Interface"]
    grouped = [p for group in interface["ParameterGroups"] for p in group["Parameters"]]
    assert sorted(grouped) == sorted(template["Parameters"])  # each exactly once
    assert set(interface["ParameterLabels"]) <= set(template["Parameters"])
    first = interface["ParameterGroups"][:3]
    assert all(g["Label"]["default"].startswith("Required") for g in first)
    required = {name for name, p in template["Parameters"].items() if "Default" not in p}
    assert required <= {p for g in first for p in g["Parameters"]}


# ---------------------------------------------------------------- issue 18: samconfig example

SAMCONFIG = TEMPLATE.parent / "samconfig.example.toml"


def _samconfig_overrides() -> dict[str, str]:
    """The example's parameter_overrides, parsed by SAM CLI's own converter."""
    import tomllib

    from samcli.cli.types import CfnParameterOverridesType

    config = tomllib.loads(SAMCONFIG.read_text())
    overrides = config["default"]["deploy"]["parameters"]["parameter_overrides"]
    return CfnParameterOverridesType().convert(overrides, None, None)


def test_the_samconfig_example_sets_only_parameters_and_every_required_one() -> None:
    import re
    import tomllib

    template = _template()
    overrides = _samconfig_overrides()
    assert set(overrides) <= set(template["Parameters"]), set(overrides) - set(template["Parameters"])
    readme = (TEMPLATE.parent / "README.md").read_text()
    deploying = readme.split("## Deploying", 1)[1].split("\n## ", 1)[0]
    for name, parameter in template["Parameters"].items():
        if "Default" not in parameter:
            assert name in overrides or f"`{name}` (required)" in deploying, name
        if "AllowedValues" in parameter and name in overrides:
            assert overrides[name] in [str(v) for v in parameter["AllowedValues"]], name
    # the Kafka source, topic, InfluxDB URL and credential, Cloud Controller API and client
    assert {"MskClusterArn", "KafkaTopic", "InfluxUrl", "InfluxTokenSecretArn"} <= set(overrides)
    assert {"CfApiUrl", "CfClientId", "CfClientSecretArn"} <= set(overrides)
    # placeholders only: no account id, no real host
    text = SAMCONFIG.read_text()
    assert not re.search(r"(?<!\d)\d{12}(?!\d)", text)
    for value in overrides.values():
        if "://" in value:
            assert ".example.com" in value, value
        if value.startswith("arn:"):
            assert ":REGION:ACCOUNT_ID:" in value, value
    deploy = tomllib.loads(text)["default"]["deploy"]["parameters"]
    assert deploy["capabilities"] == "CAPABILITY_IAM"  # the template creates roles, none named
