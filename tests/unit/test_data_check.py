"""The data check through the real CLI: each kind of bad data gives one clear error and exit 2.

Every case copies the bundled digits data into tmp_path, breaks it, and runs `python -m mlci data --config`.
Rows in messages are 1-based data rows (the header is not counted); byte-level errors name the file line.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSV = "data/digits.csv"


def project(tmp_path: Path, csv_text: str | bytes | None = None, *, schema: str | None = None) -> Path:
    """A project in tmp_path: mlci.toml, data/schema.toml and data/digits.csv (bundled, or the given text)."""
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "mlci.toml").write_text('[data]\nfiles = ["data/digits.csv"]\nschema = "data/schema.toml"\n')
    if schema is None:
        shutil.copy(ROOT / "data/schema.toml", tmp_path / "data/schema.toml")
    else:
        (tmp_path / "data/schema.toml").write_text(schema)
    target = tmp_path / CSV
    if csv_text is None:
        shutil.copy(ROOT / CSV, target)
    elif isinstance(csv_text, bytes):
        target.write_bytes(csv_text)
    else:
        target.write_text(csv_text, encoding="utf-8")
    return tmp_path / "mlci.toml"


def mlci_data(config: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlci", "data", "--config", str(config), *overrides],
        capture_output=True,
        text=True,
        timeout=120,
    )


def bundled() -> str:
    return (ROOT / CSV).read_text(encoding="utf-8")


def set_cell(text: str, row: int, column: str, value: str) -> str:
    """Replace one cell: `row` is the 1-based data row, `column` a header name."""
    lines = text.splitlines(keepends=True)
    col = lines[0].rstrip("\n").split(",").index(column)
    cells = lines[row].rstrip("\n").split(",")
    cells[col] = value
    lines[row] = ",".join(cells) + "\n"
    return "".join(lines)


def drop_column(text: str, column: str) -> str:
    rows = [line.split(",") for line in text.splitlines()]
    col = rows[0].index(column)
    return "".join(",".join(r[:col] + r[col + 1 :]) + "\n" for r in rows)


def expect_error(config: Path, *parts: str) -> str:
    """Exit 2, exactly one `Error:` line on stderr, containing every part; nothing on stdout."""
    result = mlci_data(config)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])
    assert result.stdout == ""
    return lines[0]


def test_good_file_passes_with_a_one_line_summary(tmp_path: Path) -> None:
    result = mlci_data(project(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout.strip().splitlines()
    assert len(out) == 1
    assert "1797 rows" in out[0] and "64 features" in out[0] and "10 classes" in out[0]
    import hashlib

    assert hashlib.sha256((ROOT / CSV).read_bytes()).hexdigest()[:12] in out[0]


def test_nan(tmp_path: Path) -> None:
    message = expect_error(project(tmp_path, set_cell(bundled(), 17, "px_0_3", "nan")))
    assert message == "Error: data/digits.csv: row 17: column 'px_0_3': value 'nan': NaN is not allowed"


def test_empty_field_is_a_missing_value(tmp_path: Path) -> None:
    expect_error(
        project(tmp_path, set_cell(bundled(), 3, "px_4_4", "")),
        "row 3",
        "column 'px_4_4'",
        "value ''",
        "missing value",
    )


@pytest.mark.parametrize("value", ["inf", "-inf", "+Infinity"])
def test_infinity(tmp_path: Path, value: str) -> None:
    expect_error(
        project(tmp_path, set_cell(bundled(), 1000, "px_7_7", value)),
        "data/digits.csv: row 1000: column 'px_7_7'",
        f"value {value!r}",
        "infinite",
    )


@pytest.mark.parametrize(("value", "why"), [("abc", "not a number"), ("1.5", "not an integer"), ("7 ", "not")])
def test_wrong_dtype(tmp_path: Path, value: str, why: str) -> None:
    expect_error(
        project(tmp_path, set_cell(bundled(), 42, "px_2_5", value)),
        "row 42: column 'px_2_5'",
        f"value {value!r}",
        why,
        "int",
    )


@pytest.mark.parametrize(("value", "why"), [("17", "above the schema's max"), ("-1", "below the schema's min")])
def test_out_of_range(tmp_path: Path, value: str, why: str) -> None:
    expect_error(project(tmp_path, set_cell(bundled(), 5, "px_3_3", value)), "row 5: column 'px_3_3'", why)


def test_first_bad_cell_of_a_column_is_reported(tmp_path: Path) -> None:
    text = set_cell(set_cell(bundled(), 900, "px_1_1", "x"), 30, "px_1_1", "y")
    expect_error(project(tmp_path, text), "row 30: column 'px_1_1': value 'y'")


def test_missing_column(tmp_path: Path) -> None:
    expect_error(
        project(tmp_path, drop_column(bundled(), "px_5_2")),
        "data/digits.csv: column 'px_5_2'",
        "missing from the header",
    )


def test_missing_label_column(tmp_path: Path) -> None:
    expect_error(project(tmp_path, drop_column(bundled(), "label")), "column 'label'", "missing")


def test_extra_column(tmp_path: Path) -> None:
    lines = bundled().splitlines()
    text = "".join(f"{line},{'comment' if i == 0 else i}\n" for i, line in enumerate(lines))
    expect_error(project(tmp_path, text), "data/digits.csv: column 'comment'", "not in the schema")


def test_renamed_column_names_both(tmp_path: Path) -> None:
    text = bundled().replace("px_0_0,", "px_0_O,", 1)
    expect_error(project(tmp_path, text), "column 'px_0_0'", "missing", "'px_0_O'")


def test_duplicate_header_column(tmp_path: Path) -> None:
    text = bundled().replace("px_0_1,", "px_0_0,", 1)
    expect_error(project(tmp_path, text), "column 'px_0_0'", "twice")


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "empty"),
        (b"\n\n", "empty"),
        (b"\xef\xbb\xbf\n", "empty"),
        (bundled().splitlines(keepends=True)[0].encode(), "no data rows"),
    ],
    ids=["zero-bytes", "blank-lines", "byte-order-mark-only", "header-only"],
)
def test_empty_file(tmp_path: Path, content: bytes, why: str) -> None:
    expect_error(project(tmp_path, content), "data/digits.csv", why)


@pytest.mark.parametrize("value", ["10", "-1", "seven", "nan", ""])
def test_label_outside_the_label_set(tmp_path: Path, value: str) -> None:
    expect_error(
        project(tmp_path, set_cell(bundled(), 1797, "label", value)),
        "row 1797: column 'label'",
        f"value {value!r}",
        "not in the label set",
    )


def test_duplicate_rows(tmp_path: Path) -> None:
    lines = bundled().splitlines(keepends=True)
    lines.insert(10, lines[5])  # data row 10 repeats data row 5
    expect_error(project(tmp_path, "".join(lines)), "data/digits.csv: row 10: duplicate of row 5")


def test_duplicate_rows_allowed_by_the_schema(tmp_path: Path) -> None:
    lines = bundled().splitlines(keepends=True)
    lines.insert(10, lines[5])
    schema = (
        (ROOT / "data/schema.toml").read_text().replace("allow_duplicate_rows = false", "allow_duplicate_rows = true")
    )
    result = mlci_data(project(tmp_path, "".join(lines), schema=schema))
    assert result.returncode == 0, result.stderr
    assert "1798 rows" in result.stdout


def test_row_with_too_few_fields(tmp_path: Path) -> None:
    lines = bundled().splitlines(keepends=True)
    lines[250] = ",".join(lines[250].split(",")[:40]) + "\n"
    expect_error(project(tmp_path, "".join(lines)), "row 250", "has 40 fields but the header has 65")


def test_row_with_too_many_fields(tmp_path: Path) -> None:
    lines = bundled().splitlines(keepends=True)
    lines[7] = lines[7].rstrip("\n") + ",3\n"
    expect_error(project(tmp_path, "".join(lines)), "row 7", "has 66 fields")


def test_cut_off_last_line(tmp_path: Path) -> None:
    data = (ROOT / CSV).read_bytes()
    expect_error(project(tmp_path, data[: len(data) - 60]), "row 1797", "truncated")


def test_binary_junk(tmp_path: Path) -> None:
    data = bytearray((ROOT / CSV).read_bytes())
    at = data.index(b"\n", 5000) + 1
    data[at:at] = b"\x00\x01\x02PK\x03\x04\x00\x00"
    line = data[:at].count(b"\n") + 1
    expect_error(project(tmp_path, bytes(data)), "binary", f"file line {line}")


def test_garbled_quoting(tmp_path: Path) -> None:
    expect_error(project(tmp_path, set_cell(bundled(), 12, "px_0_4", '"5"x')), "data/digits.csv", "line 13")


def test_blank_line_in_the_middle(tmp_path: Path) -> None:
    lines = bundled().splitlines(keepends=True)
    lines.insert(101, "\n")
    expect_error(project(tmp_path, "".join(lines)), "row 101", "blank line")


def test_not_utf8(tmp_path: Path) -> None:
    data = bundled().replace("px_0_0", "px_0_0", 1).encode()
    lines = data.splitlines(keepends=True)
    lines[3] = lines[3].replace(b"0,", "é,".encode("latin-1"), 1)
    expect_error(project(tmp_path, b"".join(lines)), "not UTF-8", "0xe9", "file line 4")


def test_long_bad_value_is_cut_in_the_message(tmp_path: Path) -> None:
    message = expect_error(project(tmp_path, set_cell(bundled(), 8, "px_1_2", "9" * 400)), "row 8", "too large")
    assert len(message) < 200 and "99..." in message


def test_windows_line_ends_and_trailing_blank_lines_are_accepted(tmp_path: Path) -> None:
    result = mlci_data(project(tmp_path, bundled().replace("\n", "\r\n") + "\r\n\r\n"))
    assert result.returncode == 0, result.stderr
    assert "1797 rows" in result.stdout


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    result = mlci_data(project(tmp_path, b"\xef\xbb\xbf" + (ROOT / CSV).read_bytes()))
    assert result.returncode == 0, result.stderr


def test_columns_may_come_in_any_order(tmp_path: Path) -> None:
    rows = [line.split(",") for line in bundled().splitlines()]
    text = "".join(",".join(reversed(r)) + "\n" for r in rows)
    result = mlci_data(project(tmp_path, text))
    assert result.returncode == 0, result.stderr


def test_missing_data_file(tmp_path: Path) -> None:
    config = project(tmp_path)
    (tmp_path / CSV).unlink()
    expect_error(config, "data/digits.csv", "file not found")


def test_bad_schema_is_a_config_error(tmp_path: Path) -> None:
    schema = (ROOT / "data/schema.toml").read_text().replace('dtype = "int"', 'dtype = "integer"')
    expect_error(project(tmp_path, schema=schema), "data/schema.toml", "defaults.dtype", "'integer'")


def test_override_points_at_another_file(tmp_path: Path) -> None:
    config = project(tmp_path)
    other = tmp_path / "other.csv"
    other.write_text(set_cell(bundled(), 2, "px_6_6", "2.5"))
    result = mlci_data(config, f"data.files=['{other}']")
    assert result.returncode == 2
    assert f"Error: {other}: row 2: column 'px_6_6': value '2.5'" in result.stderr
