"""The schema file and the library API: schema mistakes, float/NaN columns, string labels, several files."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlci.config import Config, config_from_dict, load_config
from mlci.data import check, data_files, load_schema
from mlci.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[2]


def bundled_config() -> Config:
    """The bundled data and schema, whatever else the repository's mlci.toml says today."""
    raw = {"data": {"files": ["data/digits.csv"], "schema": "data/schema.toml"}}
    return dataclasses.replace(config_from_dict(raw), root=ROOT)


SMALL_SCHEMA = """
[options]
allow_duplicate_rows = false

[label]
column = "kind"
classes = ["cat", "dog"]

[defaults]
dtype = "float"

[features]
weight = { min = 0.0, nan = true }
legs = { dtype = "int", min = 0, max = 4 }
"""


def write_project(tmp_path: Path, schema: str, files: dict[str, str]) -> Config:
    (tmp_path / "schema.toml").write_text(schema)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    listed = ", ".join(f'"{name}"' for name in files)
    (tmp_path / "mlci.toml").write_text(f'[data]\nfiles = [{listed}]\nschema = "schema.toml"\n')
    return load_config(tmp_path / "mlci.toml")


def test_bundled_schema() -> None:
    schema = load_schema(bundled_config())
    assert schema.label == "label" and schema.classes == tuple(range(10))
    assert len(schema.features) == 64 and not schema.allow_duplicate_rows
    assert all(c.dtype == "int" and (c.min, c.max) == (0, 16) and not c.nan for c in schema.features)


def test_float_columns_nan_and_string_labels(tmp_path: Path) -> None:
    config = write_project(tmp_path, SMALL_SCHEMA, {"a.csv": "kind,legs,weight\ncat,4,3.5\ndog,4,nan\ncat,3,\n"})
    ds = check(config)
    assert ds.features == ["weight", "legs"] and ds.classes == ["cat", "dog"]
    assert ds.y.tolist() == [0, 1, 0]
    assert ds.x[0].tolist() == [3.5, 4.0]
    assert np.isnan(ds.x[1, 0]) and np.isnan(ds.x[2, 0])


def test_float_column_rejects_text(tmp_path: Path) -> None:
    config = write_project(tmp_path, SMALL_SCHEMA, {"a.csv": "kind,legs,weight\ncat,4,3.5\ndog,4,heavy\n"})
    with pytest.raises(DataError) as info:
        check(config)
    assert (info.value.file, info.value.row, info.value.column, info.value.value) == ("a.csv", 2, "weight", "heavy")
    assert "not a number" in info.value.why and "float" in info.value.why


def test_int_labels_accept_leading_zeros(tmp_path: Path) -> None:
    schema = '[label]\ncolumn = "y"\nclasses = [3, 7]\n[features]\nf = {}\n'
    ds = check(write_project(tmp_path, schema, {"a.csv": "f,y\n1,07\n2,3\n"}))
    assert ds.y.tolist() == [1, 0]


def test_several_files_concatenate_and_duplicates_across_files(tmp_path: Path) -> None:
    files = {"a.csv": "kind,legs,weight\ncat,4,3.5\n", "b.csv": "weight,legs,kind\n9,2,dog\n3.5,4,cat\n"}
    config = write_project(tmp_path, SMALL_SCHEMA, files)
    with pytest.raises(DataError) as info:
        check(config)
    assert str(info.value) == (
        "b.csv: row 2: duplicate of row 1 of a.csv (same features and label); "
        "set options.allow_duplicate_rows = true in the schema to allow it"
    )
    (tmp_path / "b.csv").write_text("weight,legs,kind\n9,2,dog\n")
    ds = check(config)
    assert ds.x.tolist() == [[3.5, 4.0], [9.0, 2.0]] and ds.y.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("schema", "key", "why"),
    [
        ("[label]\ncolumn = 'y'\nclasses = [0]\n[features]\nf = {}\n[extra]\n", "extra", "unknown key"),
        ("[label]\ncolumn = 'y'\nclasses = [0]\n[features]\nf = { typ = 'int' }\n", "features.f.typ", "unknown"),
        ("[label]\ncolumn = 'y'\nclasses = [0]\n[features]\nf = { dtype = 'str' }\n", "features.f.dtype", "one of"),
        ("[label]\ncolumn = 'y'\nclasses = [0]\n[features]\nf = { min = 2, max = 1 }\n", "features.f.min", "greater"),
        ("[label]\ncolumn = 'y'\nclasses = [0]\n[features]\nf = { min = 'a' }\n", "features.f.min", "number"),
        ("[label]\ncolumn='y'\nclasses=[0]\n[features]\nf={ dtype='int', nan=true }\n", "features.f.nan", "int"),
        ("[label]\ncolumn = 'y'\nclasses = [0, 'a']\n[features]\nf = {}\n", "label.classes", "all integers"),
        ("[label]\ncolumn = 'y'\nclasses = [1, 1]\n[features]\nf = {}\n", "label.classes", "twice"),
        ("[label]\ncolumn = 'y'\nclasses = []\n[features]\nf = {}\n", "label.classes", "non-empty"),
        ("[label]\nclasses = [0]\n[features]\nf = {}\n", "label.column", "label column"),
        ("[label]\ncolumn = 'y'\nclasses = [0]\n[features]\ny = {}\n", "features.y", "label column"),
        ("[label]\ncolumn = 'y'\nclasses = [0]\n", "features", "at least one"),
        (
            "[label]\ncolumn = 'y'\nclasses = [0]\n[options]\nallow_duplicate_rows = 1\n[features]\nf = {}\n",
            "options.allow_duplicate_rows",
            "true or false",
        ),
        ("[label\n", "<file>", "not valid TOML"),
    ],
)
def test_schema_mistakes_name_the_key(tmp_path: Path, schema: str, key: str, why: str) -> None:
    config = write_project(tmp_path, schema, {"a.csv": "f,y\n1,0\n"})
    with pytest.raises(ConfigError) as info:
        load_schema(config)
    assert info.value.file == "schema.toml" and info.value.key == key and why in info.value.why


def test_missing_schema_file_names_the_config_key(tmp_path: Path) -> None:
    config = write_project(tmp_path, SMALL_SCHEMA, {"a.csv": "x\n"})
    (tmp_path / "schema.toml").unlink()
    with pytest.raises(ConfigError) as info:
        check(config)
    assert info.value.key == "data.schema" and "not found" in info.value.why


def test_data_files_lists_data_then_schema(tmp_path: Path) -> None:
    config = write_project(tmp_path, SMALL_SCHEMA, {"a.csv": "x\n", "b.csv": "x\n"})
    assert data_files(config) == [(tmp_path / n).resolve() for n in ("a.csv", "b.csv", "schema.toml")]


def test_data_files_does_not_import_numpy(tmp_path: Path) -> None:
    """`mlci train`'s no-op path hashes data_files(); importing numpy there would cost ~100 ms."""
    config = write_project(tmp_path, SMALL_SCHEMA, {"a.csv": "x\n"})
    code = (
        "import sys; from mlci.config import load_config; from mlci.data import data_files; "
        f"data_files(load_config({str(config.root / 'mlci.toml')!r})); "
        "print(sorted(m for m in ('numpy', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


WIDE_SCHEMA = """
[label]
column = "y"
classes = [0, 1]

[features]
a = { min = -10.0, max = 10.0, nan = true }
n = { dtype = "int" }
"""


def wide_csv(n: int, edits: dict[tuple[int, str], str] | None = None) -> str:
    """n rows of distinct real values (the checker's per-cell path, not its per-distinct-value one)."""
    rows = [{"a": f"{(i * 0.37) % 19 - 9.5:.6f}", "n": str(i * 7919), "y": str(i % 2)} for i in range(n)]
    for (row, column), value in (edits or {}).items():
        rows[row - 1][column] = value
    return "a,n,y\n" + "".join(f"{r['a']},{r['n']},{r['y']}\n" for r in rows)


def test_many_distinct_values_parse_exactly(tmp_path: Path) -> None:
    ds = check(write_project(tmp_path, WIDE_SCHEMA, {"w.csv": wide_csv(400, {(3, "a"): "", (9, "a"): "NaN"})}))
    assert len(ds) == 400 and np.isnan(ds.x[[2, 8], 0]).all()
    assert ds.x[10, 0] == np.float32(float(f"{(10 * 0.37) % 19 - 9.5:.6f}")) and ds.x[399, 1] == 399 * 7919


@pytest.mark.parametrize(
    ("edits", "row", "column", "value", "why"),
    [
        ({(250, "a"): "1.2.3"}, 250, "a", "1.2.3", "not a number"),
        ({(250, "n"): "5.5"}, 250, "n", "5.5", "not an integer"),
        ({(300, "a"): "abc", (120, "a"): "11.5"}, 120, "a", "11.5", "above the schema's max"),
        ({(30, "a"): "x", (120, "a"): "-11"}, 30, "a", "x", "not a number"),
        ({(77, "a"): "-inf"}, 77, "a", "-inf", "infinite"),
        ({(78, "n"): ""}, 78, "n", "", "NaN is not allowed"),
        ({(79, "a"): "1e999"}, 79, "a", "1e999", "too large"),
    ],
)
def test_many_distinct_values_first_bad_cell(
    tmp_path: Path, edits: dict[tuple[int, str], str], row: int, column: str, value: str, why: str
) -> None:
    config = write_project(tmp_path, WIDE_SCHEMA, {"w.csv": wide_csv(400, edits)})
    with pytest.raises(DataError) as info:
        check(config)
    assert (info.value.row, info.value.column, info.value.value) == (row, column, value)
    assert why in info.value.why
