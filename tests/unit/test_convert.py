"""The anchor schema, byte for byte, and the fixes of its hazards."""

from __future__ import annotations

import base64
import json

import pytest

from refinery.convert import AppTags, Dropped, base64_length, convert, go_seconds, render
from refinery.envelope import Poison, decode_value, parse_envelope, uuid_to_guid
from refinery.lineproto import format_float
from refinery.metadata.snapshot import AppInfo
from refinery_tools.dev.samples import SAMPLE_APP, sample_envelopes

TAGS = AppTags.from_info(SAMPLE_APP)
ENRICH = (
    "app=myapp,app_guid=e7b6e4d2-3f1a-4c2b-9a5d-81f0c3b2a6d4,{mid}org=acme,"
    "org_guid=a0d9f3b2-6c41-4e8a-9f57-3b2d1e0c4a68,space=dev,space_guid=5e2b7c90-8d13-4f6a-b2c4-9e7f1a3d5c08"
)

# The reference lines of shared/reference/cf-metrics-refinery.md §10, with this test's GUIDs.
EXPECTED = [
    "http_request,app=myapp,app_guid=e7b6e4d2-3f1a-4c2b-9a5d-81f0c3b2a6d4,instance=1,method=GET,org=acme,"
    "org_guid=a0d9f3b2-6c41-4e8a-9f57-3b2d1e0c4a68,space=dev,space_guid=5e2b7c90-8d13-4f6a-b2c4-9e7f1a3d5c08,"
    "status_code=200 count=1i,duration=0.012345678,response_size=1532i 1537510364123456789",
    "log,app=myapp,app_guid=e7b6e4d2-3f1a-4c2b-9a5d-81f0c3b2a6d4,instance=1,org=acme,"
    "org_guid=a0d9f3b2-6c41-4e8a-9f57-3b2d1e0c4a68,space=dev,space_guid=5e2b7c90-8d13-4f6a-b2c4-9e7f1a3d5c08,"
    "type=OUT count=1i,size=93i 1537510364199999999",
    "log,app=myapp,app_guid=e7b6e4d2-3f1a-4c2b-9a5d-81f0c3b2a6d4,instance=0,org=acme,"
    "org_guid=a0d9f3b2-6c41-4e8a-9f57-3b2d1e0c4a68,space=dev,space_guid=5e2b7c90-8d13-4f6a-b2c4-9e7f1a3d5c08,"
    "type=RTR count=1i,size=365i 1537510364136506789",
    "instance,app=myapp,app_guid=e7b6e4d2-3f1a-4c2b-9a5d-81f0c3b2a6d4,instance=1,org=acme,"
    "org_guid=a0d9f3b2-6c41-4e8a-9f57-3b2d1e0c4a68,space=dev,space_guid=5e2b7c90-8d13-4f6a-b2c4-9e7f1a3d5c08"
    " cpu=0.4518379826149203,disk=142938112i,disk_pct=0.13312149047851562,disk_quota=1073741824i,"
    "memory=187654144i,memory_pct=0.3495330810546875,memory_quota=536870912i 1537510366623456789",
    Dropped("value_metric"),
    Dropped("counter_event"),
]


def lookup(guid: str) -> AppTags | None:
    return TAGS if guid == SAMPLE_APP.guid else None


def line_of(envelope: dict) -> str | Dropped:
    outcome = convert(envelope, lookup)
    return outcome if isinstance(outcome, Dropped) else render(outcome)


def convert_json(doc: dict) -> str | Dropped:
    return line_of(parse_envelope(json.dumps(doc).encode()))


def sample(index: int) -> dict:
    return json.loads(sample_envelopes()[index])


def test_the_six_samples_give_the_reference_lines_byte_for_byte() -> None:
    values = [base64.b64encode(raw).decode() for raw in sample_envelopes()]
    assert [line_of(decode_value(v)) for v in values] == EXPECTED


def test_the_sample_file_is_the_shared_reference() -> None:
    from pathlib import Path

    shared = Path(__file__).resolve().parents[3] / "shared" / "samples" / "nozzle-envelopes.jsonl"
    if not shared.exists():
        pytest.skip("shared/ is not beside the repository")
    assert [line for line in shared.read_bytes().splitlines() if line.strip()] == sample_envelopes()


def test_uuid_vectors_from_the_anchor() -> None:
    assert uuid_to_guid({"high": 0x0001020304050607, "low": 0x08090A0B0C0D0E0F}) == (
        "0f0e0d0c-0b0a-0908-0706-050403020100"
    )
    assert uuid_to_guid({"high": 0x0011223344556677, "low": 0x8899AABBCCDDEEFF}) == (
        "ffeeddcc-bbaa-9988-7766-554433221100"
    )
    assert uuid_to_guid({"low": 14285923797169022654, "high": 6940295952872734603}) == (
        "be268fe2-00cc-41c6-8b7f-0fdb65e25060"
    )
    assert uuid_to_guid({"low": 0x7243CC580BC17AF4, "high": 0x79D4C3B2020E67A5}) == (
        "f47ac10b-58cc-4372-a567-0e02b2c3d479"
    )
    assert uuid_to_guid({}) == "00000000-0000-0000-0000-000000000000"
    assert uuid_to_guid(None) is None


def test_64_bit_integers_above_2_53_stay_exact() -> None:
    doc = sample(0)
    doc["httpStartStop"]["startTimestamp"] = 9007199254740993  # 2**53 + 1
    doc["httpStartStop"]["stopTimestamp"] = 9007199254740993
    doc["httpStartStop"]["contentLength"] = 9223372036854775807
    line = convert_json(doc)
    assert line.endswith(" count=1i,duration=0,response_size=9223372036854775807i 9007199254740993")


def test_zero_or_missing_quota_omits_the_ratio_but_keeps_the_quota() -> None:
    doc = sample(3)
    doc["containerMetric"]["memoryBytesQuota"] = 0
    del doc["containerMetric"]["diskBytesQuota"]
    line = convert_json(doc)
    assert "memory_pct" not in line and "disk_pct" not in line
    assert " cpu=0.4518379826149203,disk=142938112i,disk_quota=0i,memory=187654144i,memory_quota=0i " in line
    assert "NaN" not in line and "Inf" not in line


def test_non_finite_cpu_omits_the_field() -> None:
    raw = sample_envelopes()[3].replace(b"0.4518379826149203", b"NaN")
    line = line_of(parse_envelope(raw))
    assert " disk=142938112i," in line and "cpu" not in line


def test_unknown_method_becomes_its_decimal_and_known_ones_their_name() -> None:
    doc = sample(0)
    doc["httpStartStop"]["method"] = 99
    assert ",method=99," in convert_json(doc)
    doc["httpStartStop"]["method"] = 44
    assert ",method=VERSION_CONTROL," in convert_json(doc)
    del doc["httpStartStop"]["method"]
    assert ",method=GET," in convert_json(doc)


def test_missing_instance_index_becomes_zero() -> None:
    doc = sample(0)
    del doc["httpStartStop"]["instanceIndex"]
    assert ",instance=0,method=GET," in convert_json(doc)
    doc = sample(3)
    del doc["containerMetric"]["instanceIndex"]
    assert ",instance=0,org=acme," in convert_json(doc)
    doc = sample(1)
    doc["logMessage"]["source_instance"] = ""
    assert ",instance=0,org=acme," in convert_json(doc)


def test_log_types_and_sources() -> None:
    doc = sample(1)
    doc["logMessage"]["message_type"] = 2
    assert ",type=ERR count=1i" in convert_json(doc)
    doc["logMessage"]["message_type"] = 7
    assert ",type=7 count=1i" in convert_json(doc)
    del doc["logMessage"]["message_type"]
    assert ",type=OUT count=1i" in convert_json(doc)
    for source in ("APP", "App", "APP/TASK/migrate"):
        doc["logMessage"]["source_type"] = source
        assert isinstance(convert_json(doc), str)
    for source in ("STG", "API", "CELL", "SSH", "LGR", "DEA", "app", ""):
        doc["logMessage"]["source_type"] = source
        assert convert_json(doc) == Dropped("log_source_not_app_or_rtr")


def test_log_size_is_the_decoded_length() -> None:
    for size in range(0, 9):
        text = base64.b64encode(b"x" * size).decode()
        assert base64_length(text) == size


def test_unknown_app_and_missing_app_id_are_dropped() -> None:
    doc = sample(1)
    doc["logMessage"]["app_id"] = "00000000-0000-0000-0000-000000000001"
    assert convert_json(doc) == Dropped("unknown_app")
    del doc["logMessage"]["app_id"]
    assert convert_json(doc) == Dropped("no_app_id")
    doc = sample(0)
    del doc["httpStartStop"]["applicationId"]
    assert convert_json(doc) == Dropped("no_app_id")


def test_error_and_unknown_event_types_are_dropped() -> None:
    assert convert_json({"origin": "x", "eventType": 8, "error": {"source": "a", "code": 1}}) == Dropped(
        "error_event"
    )
    assert convert_json({"origin": "x", "eventType": 42}) == Dropped("unsupported_event_type")


@pytest.mark.parametrize(
    ("mutate", "detail"),
    [
        (lambda d: d["httpStartStop"].__setitem__("statusCode", "200"), "statusCode is str"),
        (lambda d: d["httpStartStop"].pop("startTimestamp"), "startTimestamp is missing"),
        (lambda d: d["httpStartStop"].__setitem__("contentLength", 1 << 63), "out of range"),
        (lambda d: d["httpStartStop"].__setitem__("contentLength", 1 << 64), "contentLength is float"),
        (lambda d: d["httpStartStop"].__setitem__("applicationId", {"low": -1, "high": 0}), "unsigned"),
        (lambda d: d.pop("httpStartStop"), "no 'httpStartStop' object"),
        (lambda d: d.pop("eventType"), "no eventType"),
        (lambda d: d.__setitem__("eventType", "httpstartstop"), "eventType 'httpstartstop' is not a name"),
        (lambda d: d.__setitem__("eventType", [4]), "eventType is list"),
        (lambda d: d["httpStartStop"].__setitem__("method", "FETCH"), "method 'FETCH' is not a name"),
        (lambda d: d["httpStartStop"].__setitem__("applicationId", "e7b6e4d2"), "applicationId is str"),
    ],
)
def test_wrong_types_are_poison_with_a_reason(mutate, detail) -> None:
    doc = sample(0)
    mutate(doc)
    with pytest.raises(Poison) as caught:
        convert_json(doc)
    assert detail in caught.value.detail


def test_container_metric_without_timestamp_is_poison() -> None:
    doc = sample(3)
    del doc["timestamp"]
    with pytest.raises(Poison, match="timestamp"):
        convert_json(doc)


def test_go_float_formatting() -> None:
    assert format_float(4.0) == "4"
    assert format_float(0.0) == "0"
    assert format_float(1e-05) == "0.00001"
    assert format_float(12345678.0) == "12345678"
    assert format_float(1e16) == "10000000000000000"
    assert format_float(1.5e-7) == "0.00000015"
    assert format_float(0.4518379826149203) == "0.4518379826149203"
    assert format_float(float("nan")) is None
    assert format_float(float("inf")) is None
    assert format_float(float("-inf")) is None


def test_duration_follows_go_duration_seconds() -> None:
    assert go_seconds(12_345_678) == 0.012345678
    assert go_seconds(1_234_567_890_123) == 1234.0 + 567890123 / 1e9
    assert go_seconds(-1_500_000_000) == -1.0 + -500000000 / 1e9
    assert go_seconds(0) == 0.0


def test_app_tags_escape_user_names() -> None:
    info = AppInfo("g", "my app,v=2", "s", 'sp"ace', "o", "Ørg\nname")
    tags = AppTags.from_info(info)
    assert tags.head == ",app=my\\ app\\,v\\=2,app_guid=g"
    assert tags.tail == ',org=Ørg\\ name,org_guid=o,space=sp"ace,space_guid=s'
