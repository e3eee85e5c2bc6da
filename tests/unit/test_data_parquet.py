"""Parquet data files: typed columns checked against the schema's dtypes, then values as for CSV, in batches
(parquet._BATCH made small here so that the bundled data spans many), alone or mixed with CSV files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from mlci import data, parquet
from mlci.config import Config, load_config
from mlci.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = (ROOT / "data/schema.toml").read_text()
CSV = (ROOT / "data/digits.csv").read_text()
FLOATS = (
    '[label]\ncolumn = "y"\nclasses = ["no", "yes"]\n[features]\n'
    'f = { dtype = "float", min = -5, max = 5 }\ng = { dtype = "float", nan = true }\n'
)


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parquet, "_BATCH", 100)


def bundled() -> pa.Table:
    return pacsv.read_csv(ROOT / "data/digits.csv")  # int64 columns


def project(tmp_path: Path, *files: pa.Table | str, schema: str = SCHEMA) -> Config:
    """A project whose data.files are the given tables (written as Parquet, row groups of 300) or CSV texts."""
    (tmp_path / "schema.toml").write_text(schema)
    names = []
    for i, content in enumerate(files):
        if isinstance(content, str):
            name = f"f{i}.csv"
            (tmp_path / name).write_text(content)
        else:
            name = f"f{i}.parquet"
            pq.write_table(content, tmp_path / name, row_group_size=300)
        names.append(name)
    listed = ", ".join(f'"{n}"' for n in names)
    (tmp_path / "mlci.toml").write_text(f'[data]\nfiles = [{listed}]\nschema = "schema.toml"\n')
    return load_config(tmp_path / "mlci.toml")


def error(config: Config) -> DataError:
    """The error of both checks (keeping rows and not), which must be the same."""
    with pytest.raises(DataError) as kept:
        data.check(config)
    with pytest.raises(DataError) as not_kept:
        data.validate(config)
    assert str(kept.value) == str(not_kept.value)
    return kept.value


def with_column(table: pa.Table, name: str, values: pa.Array | list[object]) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values if isinstance(values, pa.Array) else
                            pa.array(values))  # fmt: skip


def floats(n: int = 1000) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table({"f": rng.uniform(-5, 5, n), "g": rng.normal(size=n), "y": ["no", "yes"] * (n // 2)})


def test_a_parquet_copy_of_the_bundled_file_gives_the_same_rows_and_split(tmp_path: Path) -> None:
    (tmp_path / "csv").mkdir()
    from_csv = data.check(project(tmp_path / "csv", CSV))
    config = project(tmp_path, bundled())
    from_parquet = data.check(config)
    np.testing.assert_array_equal(from_parquet.x, from_csv.x)
    np.testing.assert_array_equal(from_parquet.y, from_csv.y)
    assert data.validate(config) == 1797
    _, held_out = data.load_splits(config)
    assert len(held_out) == 359


def test_a_column_of_the_wrong_type_names_file_column_expected_and_found(tmp_path: Path) -> None:
    table = bundled()
    table = with_column(table, "px_2_5", table.column("px_2_5").cast(pa.float64()))
    e = error(project(tmp_path, table))
    assert (e.file, e.column) == ("f0.parquet", "px_2_5")
    assert "the file's column type is double; expected an integer type (the schema's dtype is int)" in e.why
    table = with_column(bundled(), "label", [str(v) for v in bundled().column("label").to_pylist()])
    e = error(project(tmp_path, table))
    assert e.column == "label" and "type is string; expected an integer type (the label set is integers)" in e.why


def test_a_nan_where_the_schema_forbids_it_names_its_row_across_batches(tmp_path: Path) -> None:
    table = floats()
    f = table.column("f").to_numpy().copy()
    f[[733, 950]] = np.nan
    e = error(project(tmp_path, with_column(table, "f", f), schema=FLOATS))
    assert (e.row, e.column, e.value, e.why) == (734, "f", "nan", "NaN is not allowed")
    g = table.column("g").to_numpy().copy()
    g[10] = np.nan  # allowed in g
    nulls = pa.array([None if i == 420 else v for i, v in enumerate(table.column("f").to_pylist())], pa.float64())
    e = error(project(tmp_path, with_column(with_column(table, "g", g), "f", nulls), schema=FLOATS))
    assert (e.row, e.column, e.value) == (421, "f", "null") and "a null (a missing value)" in e.why


def test_values_are_checked_as_for_csv(tmp_path: Path) -> None:
    table = floats()
    f = table.column("f").to_numpy().copy()
    f[599] = 7.5
    g = table.column("g").to_numpy().copy()
    g[5] = np.inf
    e = error(project(tmp_path, with_column(with_column(table, "f", f), "g", g), schema=FLOATS))
    assert (e.row, e.column, e.value, e.why) == (600, "f", "7.5", "above the schema's max (5)")  # f before g
    labels = table.column("y").to_pylist()
    labels[250] = "maybe"
    e = error(project(tmp_path, with_column(table, "y", labels), schema=FLOATS))
    assert (e.row, e.column, e.value) == (251, "y", "maybe") and "not in the label set" in e.why


def test_a_missing_column_and_an_unknown_one_are_named(tmp_path: Path) -> None:
    e = error(project(tmp_path, bundled().drop_columns(["px_7_0"])))
    assert e.column == "px_7_0" and "missing from the file's columns; the schema schema.toml requires it" in e.why
    e = error(project(tmp_path, bundled().append_column("extra", pa.array(np.zeros(1797)))))
    assert e.column == "extra" and "not in the schema schema.toml" in e.why


def test_a_mixed_list_of_csv_and_parquet_is_read_in_order_with_duplicates_across_them(tmp_path: Path) -> None:
    head = bundled().slice(0, 1000)
    tail = "".join(CSV.splitlines(keepends=True)[:1] + CSV.splitlines(keepends=True)[1001:])
    config = project(tmp_path, head, tail)
    ds = data.check(config)
    assert len(ds) == 1797 and data.validate(config) == 1797
    again = "".join(CSV.splitlines(keepends=True)[:1] + CSV.splitlines(keepends=True)[1500:1501])
    e = error(project(tmp_path, head, tail, again))
    assert (e.file, e.row) == ("f2.csv", 1) and "duplicate of row 500 of f1.csv" in e.why
    e = error(project(tmp_path, "".join(CSV.splitlines(keepends=True)[:1] + CSV.splitlines(keepends=True)[5:6]), head))
    assert (e.file, e.row) == ("f1.parquet", 5) and "duplicate of row 1 of f0.csv" in e.why


def test_a_file_that_is_not_parquet_is_a_data_error(tmp_path: Path) -> None:
    config = project(tmp_path, bundled())
    (tmp_path / "f0.parquet").write_text(CSV)
    e = error(config)
    assert e.file == "f0.parquet" and "not a readable Parquet file" in e.why


def test_mlci_data_checks_a_parquet_file(tmp_path: Path) -> None:
    project(tmp_path, bundled())
    done = subprocess.run(
        [sys.executable, "-m", "mlci", "data", "--config", str(tmp_path / "mlci.toml")], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.startswith("data OK: 1797 rows, 64 features + label"), done


def test_the_load_test_sends_the_first_rows_of_a_parquet_data_file(tmp_path: Path) -> None:
    from mlci.loadtest import payload

    config = project(tmp_path, bundled())
    rows, source = payload.bundled_rows(config, None, 64)
    first = bundled().slice(0, payload.MAX_ROWS).to_pylist()
    assert rows == [[float(r[f"px_{i // 8}_{i % 8}"]) for i in range(64)] for r in first]
    assert source == f"first {payload.MAX_ROWS} rows of f0.parquet"
    project(tmp_path, bundled().drop_columns(["px_0_3"]))
    with pytest.raises(DataError, match="no column 'px_0_3'"):
        payload.bundled_rows(config, None, 64)
