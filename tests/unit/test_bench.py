"""``refinery bench``: a quick run writes every non-server figure; the synthetic traffic is nozzle-exact.

Whether the targets are met is what the benchmark reports, not what this test checks: it checks that
every measurement happened and produced a number, that the exit code says whether a target was
missed (3) or a measurement failed (1), and that the tracked document is written only when asked.
"""

from __future__ import annotations

import argparse
import base64
import re
from pathlib import Path

import orjson
import pytest

from refinery.envelope import decode_value, uuid_to_guid
from refinery.pipeline import convert_batch
from refinery_tools.dev import bench, workload
from refinery_tools.dev.samples import sample_envelopes

ROW = re.compile(
    r"^\| (?P<name>[^|]+?) \| (?P<ours>.+?) \| (?P<baseline>.+?) \| (?P<ratio>[^|]+?)"
    r" \| .+ \| (?P<result>\w+) \|$"
)


def table_rows(text: str) -> dict[str, dict[str, str]]:
    rows = {}
    for line in text.splitlines():
        match = ROW.match(line)
        if match and match["name"] != "figure":
            rows[match["name"]] = match.groupdict()
    return rows


def test_quick_run_writes_every_figure_without_servers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "performance.md"

    code = bench.main(["--quick", "--skip-servers", "--output", str(output)])

    text = output.read_text(encoding="utf-8")
    for heading in ("| date |", "| commit |", "| python |", "| machine |", "| workload |"):
        assert heading in text
    rows = table_rows(text)
    names = {row["name"].split(".")[0]: row for row in rows.values()}
    assert len(rows) == len(bench.ROWS)
    for key, name, server in bench.ROWS:
        number = name.split(".")[0]
        row = names[number]
        if server:
            assert row["result"] == "SKIP", row
            continue
        assert row["result"] in ("PASS", "MISS", "INFO"), row
        ratio = float(row["ratio"].rstrip("×"))
        assert ratio > 0 and ratio == ratio, (key, row)
        assert row["ours"] != "—" and row["baseline"] != "—", row
    printed = capsys.readouterr().out
    assert "1. core cost per record vs decode floor" in printed and str(output) in printed
    missed = any(row["result"] == "MISS" for row in rows.values())
    assert code == (3 if missed else 0)  # a missed target is a failed run


def test_a_run_writes_the_tracked_document_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tracked = tmp_path / "docs" / "performance.md"
    monkeypatch.setattr(bench, "default_output", lambda: tracked)

    code = bench.main(["--quick", "--skip-servers"])

    assert not tracked.exists()
    captured = capsys.readouterr()
    assert "no file written: --write-doc updates docs/performance.md" in captured.out
    assert code == (3 if "MISS" in captured.out else 0)
    parser_args = {"output": None, "write_doc": True}
    assert bench.doc_path(argparse.Namespace(**parser_args)) == tracked
    assert bench.doc_path(argparse.Namespace(output=tmp_path / "x.md", write_doc=False)) == tmp_path / "x.md"
    assert bench.doc_path(argparse.Namespace(output=None, write_doc=False)) is None


def rows_with(*statuses: str) -> list[bench.Row]:
    return [
        bench.Row(f"k{i}", f"{i}. figure", ours="1 µs", target="≤ 1.00×", status=status)
        for i, status in enumerate(statuses)
    ]


@pytest.mark.parametrize(
    ("statuses", "code"),
    [
        (("PASS", "INFO", "SKIP"), 0),
        (("PASS", "MISS", "INFO"), 3),
        (("MISS", "ERROR"), 1),
    ],
)
def test_the_exit_code_says_whether_every_target_was_met(
    statuses: tuple[str, ...], code: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "perf.md"
    assert bench.report(rows_with(*statuses), {"date": "today"}, output, 1.0) == code
    assert output.read_text().startswith("# Performance")
    err = capsys.readouterr().err
    for i, status in enumerate(statuses):
        assert (f"{status}: {i}. figure (1 µs against target ≤ 1.00×)" in err) == (
            status in ("MISS", "ERROR")
        )


def test_nozzle_json_reproduces_the_bundled_samples_byte_for_byte() -> None:
    for line in sample_envelopes():
        assert workload.nozzle_json(orjson.loads(line)) == line


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (12345678.0, "1.2345678e+07"),
        (1e6, "1e+06"),
        (999999.0, "999999"),
        (0.4518379826149203, "0.4518379826149203"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (4.0, "4"),
        (0.0, "0"),
        (-2.5e-7, "-2.5e-07"),
    ],
)
def test_go_float_is_gos_shortest_g_format(value: float, text: str) -> None:
    assert workload.go_float(value) == text


def test_synthetic_batch_is_processed_completely() -> None:
    work = workload.build_workload(300, 200, 50, seed=3)
    assert work.records == 300 and sum(work.kinds.values()) == 300
    store = workload.new_store(work.snapshot)
    workload.start_invocation(store)
    done = convert_batch(work.event, store)
    assert done.result.points == work.expected_points
    assert not done.quarantine and set(done.result.dropped) <= {"value_metric", "counter_event"}
    assert len(bench.point_baseline(work.event, work.apps)) == work.expected_points
    for batch in work.event["records"].values():
        for record in batch:
            envelope = decode_value(record["value"])
            assert base64.b64decode(record["value"]) == workload.nozzle_json(envelope)
            body = envelope.get("httpStartStop")
            if body:
                assert uuid_to_guid(body["applicationId"]) in work.apps
            message = envelope.get("logMessage", {}).get("message")
            if message:
                assert 60 <= len(base64.b64decode(message)) <= 400


def test_cost_assumptions() -> None:
    cost = bench.cost_of(cpu_per_record=10e-6, wait_per_record=0.0, batch_records=10_000)
    # 10 µs of CPU at 512/1769 of a vCPU, 0.5 GB, 10^9 records
    assert cost.gb_seconds == pytest.approx(10e-6 / (512 / 1769) * 1e9 * 0.5)
    assert cost.lambda_usd == pytest.approx(cost.gb_seconds * 0.0000166667 + 100_000 * 0.2e-6)
    assert cost.fargate_usd == pytest.approx(10e-6 * 1e9 / 0.5 / 3600 * 0.0247)
