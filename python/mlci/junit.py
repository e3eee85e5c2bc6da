"""Gate verdicts as JUnit XML (one testcase per gate), the format Jenkins and GitLab show as test results."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from mlci.atomic import replacing
from mlci.gates import GateResult


def gates_xml(gates: Sequence[GateResult], *, suite: str, classname: str) -> ET.ElementTree:
    failures = sum(g.status == "failed" for g in gates)
    skipped = sum(g.status == "skipped" for g in gates)
    counts = {"tests": str(len(gates)), "failures": str(failures), "errors": "0", "skipped": str(skipped)}
    root = ET.Element("testsuites", {"name": "mlci gates", **counts})
    ts = ET.SubElement(root, "testsuite", {"name": suite, **counts})
    for g in gates:
        case = ET.SubElement(ts, "testcase", {"name": g.name, "classname": classname, "time": "0"})
        if g.status == "failed":
            failure = ET.SubElement(case, "failure", {"message": g.message, "type": "GateFailed"})
            failure.text = f"value {g.value} limit {g.limit}: {g.message}"
        elif g.status == "skipped":
            ET.SubElement(case, "skipped", {"message": g.message})
        else:
            ET.SubElement(case, "system-out").text = g.message
    ET.indent(root)
    return ET.ElementTree(root)


def write_gates_xml(path: Path, gates: Sequence[GateResult], *, suite: str, classname: str) -> Path:
    with replacing(path) as tmp:
        gates_xml(gates, suite=suite, classname=classname).write(tmp, encoding="utf-8", xml_declaration=True)
    return path
