"""Recording rules files: every problem named by file, rule and field; reloading like the snapshot."""

from __future__ import annotations

import os

import pytest

from refinery.metadata.store import FileSnapshotSource
from refinery.rules.loader import RuleBook, RulesError, RulesUnavailable, parse_rules

GOOD = """
rules:
  - name: http_5xx_per_app
    source: http_request
    filter: ['status_code =~ "5.."', "method != 'GET'", "org = acme"]
    keep: [org, space, app]
    field: count
    aggregation: sum
    window: 60s
  - name: log_lines
    source: log
    aggregation: count
    window: 5m
    keep_raw: false
    output_field: lines
"""

VALID_RULE = {
    "name": "r",
    "source": "http_request",
    "keep": ["app"],
    "field": "count",
    "aggregation": "sum",
    "window": "60s",
}


def one_rule(**changes: object) -> str:
    rule = {**VALID_RULE, **changes}
    rule = {k: v for k, v in rule.items() if v is not DELETE}
    import yaml

    return yaml.safe_dump({"rules": [rule]})


DELETE = object()


def problems(text: str, origin: str = "rules.yaml") -> list[str]:
    with pytest.raises(RulesError) as caught:
        parse_rules(text, origin)
    assert str(caught.value).startswith("invalid recording rules:")
    return caught.value.problems


def test_a_good_file() -> None:
    rules = parse_rules(GOOD, "rules.yaml")
    first, second = rules.rules
    assert (first.name, first.source, first.keep, first.field, first.aggregation) == (
        "http_5xx_per_app",
        "http_request",
        ("org", "space", "app"),
        "count",
        "sum",
    )
    assert first.window_ms == 60_000 and first.keep_raw is True and first.output_field == "sum"
    assert [(m.tag, m.op, m.value) for m in first.matchers] == [
        ("status_code", "=~", "5.."),
        ("method", "!=", "GET"),
        ("org", "=", "acme"),
    ]
    assert first.constant_tags == {"org": "acme"}
    assert first.matches({"status_code": "503", "method": "POST", "org": "acme"})
    assert not first.matches({"status_code": "5030", "method": "POST", "org": "acme"})  # regex: whole value
    assert not first.matches({"status_code": "503", "method": "GET", "org": "acme"})
    assert (second.field, second.aggregation, second.window_ms, second.keep_raw, second.output_field) == (
        None,
        "count",
        300_000,
        False,
        "lines",
    )
    assert rules.by_source == {"http_request": (first,), "log": (second,)}


def test_the_message_names_file_rule_and_field() -> None:
    assert problems(one_rule(name="http_5xx_per_app", window="soon")) == [
        'rules.yaml: rule "http_5xx_per_app": field "window": must be a duration like 60s'
    ]


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [
        ({"window": "soon"}, "window", "must be a duration like 60s"),
        ({"window": DELETE}, "window", "must be a duration like 60s"),
        ({"window": True}, "window", "must be a duration like 60s"),
        ({"window": "500ms"}, "window", "between 1s and 24h"),
        ({"window": "2h"}, "window", None),
        ({"window": "25h"}, "window", "between 1s and 24h"),
        ({"window": "1.0001s"}, "window", "whole number of milliseconds"),
        ({"window": 90}, "window", None),
        ({"source": "http_requests"}, "source", "must be one of http_request, log, instance"),
        ({"source": DELETE}, "source", "must be one of"),
        ({"aggregation": "avg"}, "aggregation", "must be one of sum, count, min, max"),
        ({"aggregation": DELETE}, "aggregation", "must be one of"),
        ({"field": DELETE}, "field", "required for sum"),
        ({"field": DELETE, "aggregation": "count"}, "field", None),
        ({"field": 3}, "field", "must be a field name"),
        ({"field": ""}, "field", "must be a field name"),
        ({"filter": "status_code"}, "filter", "is not a matcher"),
        ({"filter": ["status_code ~ 5"]}, "filter", "is not a matcher"),
        ({"filter": ["status_code =~ '5('"]}, "filter", "not a valid regular expression"),
        ({"filter": ['app = "unterminated']}, "filter", "not closed"),
        ({"filter": ["app = 'unterminated"]}, "filter", "not closed"),
        ({"filter": [{"app": "x"}]}, "filter", "is not a matcher"),
        ({"filter": {"app": "x"}}, "filter", "must be a list of matchers"),
        ({"keep": "app"}, "keep", "must be a list of tag names"),
        ({"keep": ["app", 3]}, "keep", "must be a list of tag names"),
        ({"keep": ["app", "app"]}, "keep", "lists a tag twice"),
        ({"keep": ["partition"]}, "keep", "cannot be kept"),
        ({"keep_raw": "no"}, "keep_raw", "must be true or false"),
        ({"output_field": "2x"}, "output_field", "letters, digits and _"),
        ({"windw": "60s"}, "windw", "unknown field"),
    ],
)
def test_invalid_fields(changes: dict[str, object], field: str, fragment: str | None) -> None:
    text = one_rule(**changes)
    if fragment is None:
        assert parse_rules(text, "rules.yaml").rules
        return
    found = problems(text)
    assert len(found) == 1, found
    assert found[0].startswith(f'rules.yaml: rule "r": field "{field}": ')
    assert fragment in found[0]


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("bad name", "letters, digits and _"),
        ("1st", "letters, digits and _"),
        ("http_request", "must not be a measurement the enricher writes"),
        ("", "required"),
        (42, "required"),
    ],
)
def test_invalid_names_are_named_by_position(name: object, fragment: str) -> None:
    found = problems(one_rule(name=name))
    assert len(found) == 1
    label = f'rule "{name}"' if isinstance(name, str) and name else "rule #1"
    assert found[0].startswith(f'rules.yaml: {label}: field "name": ') and fragment in found[0]


def test_every_problem_of_every_rule_at_once() -> None:
    text = """
rules:
  - name: a
    source: log
    aggregation: median
    window: 60s
  - {name: a, source: log, aggregation: count, window: 0s}
  - just a string
"""
    assert problems(text) == [
        'rules.yaml: rule "a": field "aggregation": must be one of sum, count, min, max (got \'median\')',
        'rules.yaml: rule "a": field "name": another rule has the same name',
        'rules.yaml: rule "a": field "window": must be between 1s and 24h',
        "rules.yaml: rule #3: must be a mapping of fields",
    ]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "the file is empty"),
        ("rules: [", "not valid YAML (line 1, column"),
        ("- name: x", "must be a mapping with a `rules` list"),
        ("rules: {name: x}", "`rules` must be a list"),
        ("rule: []", "unknown top-level key 'rule'"),
    ],
)
def test_invalid_documents(text: str, fragment: str) -> None:
    found = problems(text, "s3://bucket/rules.yaml")
    assert any(p.startswith("s3://bucket/rules.yaml: ") and fragment in p for p in found), found


def test_an_empty_list_is_no_rules() -> None:
    assert not parse_rules("rules: []", "rules.yaml")


def test_the_book_loads_then_reloads_only_when_due_and_keeps_good_rules(tmp_path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD)
    now = [0.0]
    book = RuleBook(FileSnapshotSource(str(path)), check_interval=60, clock=lambda: now[0])
    first = book.refresh_if_due()
    assert [r.name for r in first.rules] == ["http_5xx_per_app", "log_lines"]

    path.write_text(one_rule(name="replacement"))
    os.utime(path, ns=(1, 1))  # a different mtime: the "ETag" changed
    now[0] = 59.0
    assert book.refresh_if_due() is first  # not due yet
    now[0] = 61.0
    assert [r.name for r in book.refresh_if_due().rules] == ["replacement"]
    assert (book.stats.loads, book.stats.failures) == (2, 0)

    path.write_text(one_rule(name="broken", window="later"))
    os.utime(path, ns=(2, 2))
    now[0] = 200.0
    kept = book.refresh_if_due()
    assert [r.name for r in kept.rules] == ["replacement"]  # a bad change keeps the rules in force
    assert book.stats.failures == 1 and 'rule "broken": field "window"' in book.stats.last_error


def test_the_first_load_must_succeed(tmp_path) -> None:
    path = tmp_path / "rules.yaml"
    book = RuleBook(FileSnapshotSource(str(path)))
    with pytest.raises(RulesUnavailable, match="cannot read"):
        book.refresh_if_due()
    path.write_text(one_rule(aggregation="avg"))
    with pytest.raises(RulesError, match='rule "r": field "aggregation"'):
        book.refresh_if_due()
    path.write_text(GOOD)
    assert book.refresh_if_due().rules  # tried again at once, not after the interval


def test_influx_output_is_records_by_default_or_aggregates() -> None:
    assert parse_rules(one_rule(), "rules.yaml").rules[0].influx_output == "records"
    rule = parse_rules(one_rule(influx_output="aggregates"), "rules.yaml").rules[0]
    assert rule.influx_output == "aggregates"
    assert problems(one_rule(influx_output="points")) == [
        'rules.yaml: rule "r": field "influx_output": must be one of records, aggregates (got \'points\')'
    ]


def test_the_bundled_example_is_valid() -> None:
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "rules" / "example.yaml"
    rules = parse_rules(path.read_bytes(), str(path))
    assert [r.name for r in rules.rules] == [
        "http_5xx_per_app",
        "http_requests_by_status",
        "http_slowest_per_app",
        "log_bytes_per_org",
    ]
    assert [r.influx_output for r in rules.rules] == ["records"] * 3 + ["aggregates"]


def test_config_check_names_the_rule_and_field(tmp_path, monkeypatch, capsys) -> None:
    from pathlib import Path

    from refinery_tools.cli import main

    rules = tmp_path / "rules.yaml"
    rules.write_text(one_rule(name="http_5xx_per_app", window="soon"))
    snapshot = Path(__file__).resolve().parents[2] / "events" / "sample-snapshot.json.gz"
    monkeypatch.setenv("METADATA_FILE", str(snapshot))
    monkeypatch.setenv("RULES_FILE", str(rules))
    assert main(["config", "--check"]) == 1
    assert (
        f'{rules}: rule "http_5xx_per_app": field "window": must be a duration like 60s'
        in capsys.readouterr().out  # the config --check report is its output (stdout)
    )
    rules.write_text(GOOD)
    assert main(["config", "--check"]) == 0
