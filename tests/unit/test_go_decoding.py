"""Envelopes read as Go's encoding/json reads them (cf-metrics-refinery decoded with it).

Go matches keys to struct fields exactly, else case-insensitively (``bytes.EqualFold``, which also
folds the Kelvin sign to k and the long s to s), key by key in order: the last matching key wins, and
an object given twice for one struct field is decoded into the same struct. Enums take a number or
the enum's name as a string. cf-metrics-refinery's own fixtures spell ``HttpStartStop``.

Each case is checked three ways: the reference path's line (:func:`refinery.convert.convert`),
the line the nozzle's exact spelling gives (the same point), and the compiled fast path, which must
either give the same or decline (never read a variant key differently).
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refinery.convert import AppTags, Dropped, convert
from refinery.envelope import Poison, go_fold, go_view
from refinery_tools.dev.samples import SAMPLE_APP, sample_envelopes
from support.unavailable import unavailable

TAGS = {SAMPLE_APP.guid: AppTags.from_info(SAMPLE_APP)}
SAMPLES = [json.loads(raw) for raw in sample_envelopes()]  # http, log, rtr log, container, value, counter


def line_of(doc: Any) -> Any:
    return convert(doc, TAGS.get)


def compiled(doc: Any) -> Any:
    try:
        from refinery._record_fastpath import convert_value
    except ImportError as exc:
        unavailable(f"the compiled fast path is not built ({exc})")
    return convert_value(base64.b64encode(json.dumps(doc).encode()).decode(), TAGS.get)


def agree(doc: Any, want: Any) -> None:
    assert line_of(doc) == want
    fast = compiled(doc)
    assert fast is None or fast == want, (fast, want)


def renamed(obj: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    return {names.get(k, k): v for k, v in obj.items()}


def test_cf_metrics_refinery_fixture_spelling_is_read() -> None:
    doc = renamed(SAMPLES[0], {"httpStartStop": "HttpStartStop", "eventType": "EventType"})
    doc["HttpStartStop"] = renamed(doc["HttpStartStop"], {"startTimestamp": "StartTimestamp"})
    agree(doc, line_of(SAMPLES[0]))
    assert compiled(doc) is None  # variant keys: the fast path hands the record to the reference


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_every_key_in_any_case_gives_the_same_point(index: int) -> None:
    want = line_of(SAMPLES[index])
    for change in (str.upper, str.lower, str.swapcase):
        doc = {change(k): v for k, v in SAMPLES[index].items()}
        for key, value in list(doc.items()):
            if isinstance(value, dict):
                doc[key] = {change(k): (dict(v) if isinstance(v, dict) else v) for k, v in value.items()}
        agree(doc, want)


def test_unicode_folds_as_go_does() -> None:
    # Kelvin sign (U+212A) and long s (U+017F) fold to k and s in Go; other lookalikes do not.
    assert go_fold("\u212aey") == "KEY" and go_fold("\u017ftartTimestamp") == "STARTTIMESTAMP"
    assert go_fold("ﬀ") is None and go_fold("İ") is None
    doc = copy.deepcopy(SAMPLES[0])
    body = doc["httpStartStop"]
    body["\u017ftatusCode"] = 503  # matches statusCode, after it: wins
    assert "status_code=503" in line_of(doc)[0]
    doc = copy.deepcopy(SAMPLES[0])
    doc["httpStartStop"]["ſtatusCodeX"] = 503  # no field of that name: ignored
    assert line_of(doc) == line_of(SAMPLES[0])


def test_the_last_matching_key_wins_in_document_order() -> None:
    doc = copy.deepcopy(SAMPLES[0])
    doc["httpStartStop"] = {"StatusCode": 500, **doc["httpStartStop"]}  # exact key later: 200 wins
    agree(doc, line_of(SAMPLES[0]))
    doc = copy.deepcopy(SAMPLES[0])
    doc["httpStartStop"]["STATUSCODE"] = 500  # variant later: 500 wins
    assert "status_code=500" in line_of(doc)[0]
    assert compiled(doc) is None


def test_a_body_given_twice_is_merged_into_one_struct() -> None:
    doc = copy.deepcopy(SAMPLES[0])
    body = doc.pop("httpStartStop")
    first = {k: v for k, v in body.items() if k in ("startTimestamp", "stopTimestamp", "applicationId")}
    second = {k: v for k, v in body.items() if k not in first}
    doc["httpStartStop"] = first
    doc["HTTPSTARTSTOP"] = second
    agree(doc, line_of(SAMPLES[0]))
    # and the UUID inside it too
    doc = copy.deepcopy(SAMPLES[0])
    uuid = doc["httpStartStop"].pop("applicationId")
    doc["httpStartStop"]["applicationId"] = {"low": uuid["low"]}
    doc["httpStartStop"]["ApplicationID"] = {"High": uuid["high"]}
    agree(doc, line_of(SAMPLES[0]))


def test_enum_names_as_strings() -> None:
    doc = copy.deepcopy(SAMPLES[0])
    doc["eventType"] = "HttpStartStop"
    doc["httpStartStop"]["method"] = "GET"
    agree(doc, line_of(SAMPLES[0]))
    doc["httpStartStop"]["method"] = "PROPFIND"
    assert ",method=PROPFIND," in line_of(doc)[0]
    log = copy.deepcopy(SAMPLES[1])
    log["eventType"] = "LogMessage"
    log["logMessage"]["message_type"] = "ERR"
    assert ",type=ERR " in line_of(log)[0]
    assert line_of({"eventType": "ValueMetric"}) == Dropped("value_metric")
    with pytest.raises(Poison, match="not a name of the enum"):
        line_of({**SAMPLES[0], "eventType": "Http"})  # names are matched exactly, as gogo-protobuf does


def test_exact_keys_keep_the_same_dict() -> None:
    for doc in SAMPLES:
        assert go_view(doc) is doc  # the nozzle's spelling costs a key check, no copy


KEY_CASES = st.sampled_from([str.upper, str.lower, str.swapcase, str.capitalize, lambda k: k])


@settings(deadline=None, max_examples=200)
@given(st.integers(0, 3), st.data())
def test_random_respellings_give_the_same_point_or_a_declined_fast_path(index: int, data: Any) -> None:
    """Any respelling of any key, in any position: the reference gives the exact-key point; the
    compiled path gives that too, or declines."""
    doc = copy.deepcopy(SAMPLES[index])

    def respell(obj: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in obj.items():
            if isinstance(value, dict):
                value = respell(value)
            out[data.draw(KEY_CASES)(key)] = value
        return out

    agree(respell(doc), line_of(SAMPLES[index]))
