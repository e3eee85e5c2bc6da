"""Gate rules and their JUnit form."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mlci.config import GatesConfig
from mlci.gates import GateResult, apply, minimum, not_worse_than_champion
from mlci.junit import write_gates_xml


def test_minimum_passes_at_the_limit_and_fails_below_it() -> None:
    assert minimum("min_accuracy", "accuracy", 0.9, 0.9).status == "passed"
    low = minimum("min_accuracy", "accuracy", 0.8999, 0.9)
    assert low.status == "failed"
    assert "0.8999 < 0.9000" in low.message


@pytest.mark.parametrize(
    ("high", "status"),
    [(-0.0201, "failed"), (-0.02, "passed"), (-0.01, "passed"), (0.03, "passed")],
)
def test_champion_gate_fails_only_when_confidently_worse_by_more_than_the_drop(high: float, status: str) -> None:
    g = not_worse_than_champion("r0001", high - 0.03, high - 0.06, high, 0.02, 0.95)
    assert g.status == status
    assert g.value == high and g.limit == -0.02
    assert "r0001" in g.message and "95%" in g.message


def test_champion_gate_is_skipped_without_a_champion_or_against_itself() -> None:
    none = not_worse_than_champion(None, None, None, None, 0.02, 0.95)
    itself = not_worse_than_champion("r0003", None, None, None, 0.02, 0.95)
    assert none.status == itself.status == "skipped"
    assert none.passed and itself.passed
    assert "no champion" in none.message and "r0003" in itself.message


def test_apply_returns_every_gate_in_order() -> None:
    gates = apply(
        GatesConfig(min_accuracy=0.9, min_macro_f1=0.95, max_drop_vs_champion=0.0),
        accuracy=0.93,
        macro_f1=0.92,
        champion_id="r0001",
        diff=(-0.02, -0.04, -0.001),
        confidence=0.95,
    )
    assert [(g.name, g.status) for g in gates] == [
        ("min_accuracy", "passed"),
        ("min_macro_f1", "failed"),
        ("champion", "failed"),
    ]


def test_gates_xml_is_junit_with_matching_counts(tmp_path: Path) -> None:
    gates = [
        GateResult("min_accuracy", "passed", 0.95, 0.9, "accuracy 0.9500 >= 0.9000"),
        GateResult("min_macro_f1", "failed", 0.5, 0.9, "macro-F1 0.5000 < 0.9000 <&>"),
        GateResult("champion", "skipped", None, -0.02, "skipped: no champion yet"),
    ]
    path = write_gates_xml(tmp_path / "gates.xml", gates, suite="digits gates r0001", classname="mlci.gates")
    root = ET.parse(path).getroot()
    suites = root.findall("testsuite") if root.tag == "testsuites" else [root]
    assert len(suites) == 1
    suite = suites[0]
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["min_accuracy", "min_macro_f1", "champion"]
    assert int(suite.get("tests")) == len(cases)
    assert int(suite.get("failures")) == sum(c.find("failure") is not None for c in cases) == 1
    assert int(suite.get("skipped")) == sum(c.find("skipped") is not None for c in cases) == 1
    assert int(suite.get("errors")) == 0
    failure = cases[1].find("failure")
    assert failure.get("message") == "macro-F1 0.5000 < 0.9000 <&>"
    assert cases[0].find("failure") is None
