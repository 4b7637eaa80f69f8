"""Static checks of template.yaml: least privilege, and what each function may touch."""

from __future__ import annotations

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


def test_no_wildcard_actions_or_resources() -> None:
    for name in ("EnricherFunction", "SelfManagedEnricherFunction", "MetadataRefreshFunction"):
        for statement in statements(name):
            assert all("*" not in a for a in actions(statement)), (name, statement)
            resource = statement["Resource"]
            assert resource != "*", (name, statement)


def test_only_the_refresh_function_writes_the_snapshot() -> None:
    for name in ("EnricherFunction", "SelfManagedEnricherFunction"):
        by_sid = {s["Sid"]: s for s in statements(name)}
        assert actions(by_sid["ReadSnapshot"]) == ["s3:GetObject"]
        assert by_sid["ReadSnapshot"]["Resource"] == {"Sub": "${MetadataBucket.Arn}/${MetadataKey}"}
        assert by_sid["WriteQuarantine"]["Resource"] == {"Sub": "${MetadataBucket.Arn}/quarantine/*"}
        writes = [s for s in statements(name) if "s3:PutObject" in actions(s)]
        assert [s["Sid"] for s in writes] == ["WriteQuarantine", "WriteFailedBatches"]
        assert by_sid["WriteFailedBatches"]["Resource"] == [
            {"GetAtt": "FailedBatchesBucket.Arn"},
            {"Sub": "${FailedBatchesBucket.Arn}/*"},
        ]
    refresh = {s["Sid"]: s for s in statements("MetadataRefreshFunction")}
    assert sorted(actions(refresh["ReadAndWriteSnapshot"])) == ["s3:GetObject", "s3:PutObject"]
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
