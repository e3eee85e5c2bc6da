"""The data check reads files in chunks: messages, row numbers and the first problem are those of reading each file
whole. Chunks are made tiny here (data._BLOCK, data._BATCH) so that the bundled file spans dozens of them."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlci import data
from mlci.config import Config, load_config
from mlci.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = (ROOT / "data/digits.csv").read_text()


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "_BLOCK", 4096)  # about 28 rows of digits.csv per chunk
    monkeypatch.setattr(data, "_BATCH", 50)


def project(tmp_path: Path, *files: str | bytes, schema: str | None = None) -> Config:
    (tmp_path / "schema.toml").write_text(schema or (ROOT / "data/schema.toml").read_text())
    names = []
    for i, content in enumerate(files):
        name = f"f{i}.csv"
        target = tmp_path / name
        target.write_bytes(content if isinstance(content, bytes) else content.encode())
        names.append(name)
    listed = ", ".join(f'"{n}"' for n in names)
    (tmp_path / "mlci.toml").write_text(f'[data]\nfiles = [{listed}]\nschema = "schema.toml"\n')
    return load_config(tmp_path / "mlci.toml")


def lines() -> list[str]:
    return BUNDLED.splitlines(keepends=True)


def set_cell(text: str, row: int, column: str, value: str) -> str:
    rows = text.splitlines(keepends=True)
    col = rows[0].rstrip("\n").split(",").index(column)
    cells = rows[row].rstrip("\n").split(",")
    cells[col] = value
    rows[row] = ",".join(cells) + "\n"
    return "".join(rows)


def error(config: Config) -> DataError:
    with pytest.raises(DataError) as info:
        data.check(config)
    return info.value


def test_the_bundled_file_in_many_chunks_gives_the_same_dataset(tmp_path: Path) -> None:
    chunked = data.check(project(tmp_path, BUNDLED))
    assert len(chunked) == 1797 and chunked.x.dtype == np.float32 and chunked.y.dtype == np.int64
    rows = list(csv.reader(BUNDLED.splitlines()))
    expected = np.array([r[:64] for r in rows[1:]], dtype=np.float32)
    np.testing.assert_array_equal(chunked.x, expected)
    assert chunked.y.tolist() == [int(r[64]) for r in rows[1:]]


def test_a_bad_cell_deep_in_the_file_names_its_row(tmp_path: Path) -> None:
    e = error(project(tmp_path, set_cell(BUNDLED, 1000, "px_7_7", "17")))
    assert (e.row, e.column, e.value) == (1000, "px_7_7", "17") and "above the schema's max" in e.why


def test_the_first_column_with_a_bad_cell_wins_even_if_its_row_comes_later(tmp_path: Path) -> None:
    text = set_cell(set_cell(BUNDLED, 20, "px_7_7", "x"), 1500, "px_0_1", "-1")
    e = error(project(tmp_path, text))
    assert (e.row, e.column) == (1500, "px_0_1")


def test_a_bad_label_comes_after_every_bad_feature(tmp_path: Path) -> None:
    text = set_cell(set_cell(BUNDLED, 3, "label", "10"), 1700, "px_3_3", "nan")
    e = error(project(tmp_path, text))
    assert (e.row, e.column) == (1700, "px_3_3")


def test_a_row_of_the_wrong_width_outranks_an_earlier_bad_cell(tmp_path: Path) -> None:
    rows = lines()
    rows[1600] = rows[1600].rstrip("\n") + ",3\n"
    e = error(project(tmp_path, set_cell("".join(rows), 2, "px_0_0", "abc")))
    assert e.row == 1600 and "has 66 fields" in e.why


@pytest.mark.parametrize("block", [97, 4096], ids=["blocks-shorter-than-a-line", "blocks-of-some-lines"])
def test_a_blank_line_between_chunks_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    monkeypatch.setattr(data, "_BLOCK", block)
    for at in (27, 28, 29, 248, 600, 1796):
        rows = lines()
        rows.insert(at, "\n")
        assert error(project(tmp_path, "".join(rows))).row == at, at


def test_trailing_blank_lines_across_chunks_are_tolerated(tmp_path: Path) -> None:
    assert len(data.check(project(tmp_path, BUNDLED + "\n" * 10_000))) == 1797


def test_a_cut_off_last_line_is_called_truncated(tmp_path: Path) -> None:
    e = error(project(tmp_path, BUNDLED[:-60]))
    assert e.row == 1797 and "the file looks truncated" in e.why


def test_garbled_quoting_late_in_the_file_outranks_a_header_problem(tmp_path: Path) -> None:
    text = set_cell(BUNDLED.replace("px_0_1,", "px_0_X,", 1), 1200, "px_0_4", '"5"x')
    e = error(project(tmp_path, text))
    assert "garbled CSV in the record that starts at file line 1201 (row 1200)" in str(e)


def test_a_quoted_file_is_checked_the_same_way(tmp_path: Path) -> None:
    def quoted(text: str) -> str:
        rows = text.splitlines(keepends=True)
        rows[0] = ",".join(f'"{c}"' for c in rows[0].rstrip("\n").split(",")) + "\n"
        return "".join(rows)

    assert len(data.check(project(tmp_path, quoted(BUNDLED)))) == 1797
    e = error(project(tmp_path, quoted(set_cell(BUNDLED, 1300, "px_2_2", "1.5"))))
    assert (e.row, e.column, e.value) == (1300, "px_2_2", "1.5") and "not an integer" in e.why


def test_a_control_byte_late_in_the_file_outranks_an_earlier_utf8_error(tmp_path: Path) -> None:
    raw = bytearray(BUNDLED.encode())
    latin = raw.index(b"\n", 100) + 1
    raw[latin : latin + 1] = b"\xe9"
    junk = raw.index(b"\n", 200_000) + 1
    raw[junk:junk] = b"\x01"
    line = raw[:junk].count(b"\n") + 1
    e = error(project(tmp_path, bytes(raw)))
    assert f"control byte 0x01 at file line {line} (byte offset {junk})" in e.why


def test_a_utf8_character_across_a_block_boundary_is_fine_and_a_cut_one_is_truncated(tmp_path: Path) -> None:
    schema = '[label]\ncolumn = "y"\nclasses = ["é", "ü"]\n[features]\nf = {}\n'
    body = "".join(f"{i},{'é' if i % 2 else 'ü'}\n" for i in range(2000))
    assert len(data.check(project(tmp_path, "f,y\n" + body, schema=schema))) == 2000
    cut = ("f,y\n" + body).encode()[:-2]  # ends inside the last "ü"
    e = error(project(tmp_path, cut, schema=schema))
    assert "the file looks truncated" in e.why and "not UTF-8" in e.why


def test_duplicates_across_chunks_and_files(tmp_path: Path) -> None:
    rows = lines()
    rows.insert(1500, rows[4])
    e = error(project(tmp_path, "".join(rows)))
    assert (e.file, e.row) == ("f0.csv", 1500) and "duplicate of row 4 (" in e.why
    other = rows[0] + rows[900]
    e = error(project(tmp_path, BUNDLED, other))
    assert (e.file, e.row) == ("f1.csv", 1) and "duplicate of row 900 of f0.csv" in e.why


def test_equal_hashes_alone_are_not_duplicates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every row hashing alike: the exact comparison must still tell rows apart, and still find the real one."""
    monkeypatch.setattr(data, "_mix", lambda h: h * np.uint64(0))
    assert len(data.check(project(tmp_path, BUNDLED))) == 1797
    rows = lines()
    rows.insert(700, rows[650])
    e = error(project(tmp_path, "".join(rows)))
    assert e.row == 700 and "duplicate of row 650 (" in e.why


def test_every_nan_is_the_same_missing_value(tmp_path: Path) -> None:
    schema = '[label]\ncolumn = "y"\nclasses = [0]\n[features]\nf = { dtype = "float", nan = true }\n'
    e = error(project(tmp_path, "f,y\n1,0\n,0\n2,0\n-NaN,0\n", schema=schema))
    assert e.row == 4 and "duplicate of row 2 (" in e.why


def test_rows_differing_only_beyond_float32_are_not_duplicates(tmp_path: Path) -> None:
    schema = '[label]\ncolumn = "y"\nclasses = [0]\n[features]\nf = { dtype = "float" }\n'
    ds = data.check(project(tmp_path, "f,y\n0.1000000001,0\n0.1000000002,0\n", schema=schema))
    assert len(ds) == 2 and ds.x[0, 0] == ds.x[1, 0]  # equal as float32, different as read


def test_fast_and_exact_paths_parse_the_same_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    schema = '[options]\nallow_duplicate_rows = true\n[label]\ncolumn = "y"\nclasses = ["a", "b"]\n'
    schema += '[features]\nf = { dtype = "float", nan = true }\n'
    tokens = [repr(float(v)) for v in rng.normal(0, 1e6, 3000)] + [f"{v:.17e}" for v in rng.uniform(-1, 1, 3000)]
    tokens += ["", "nan", "1.", ".5", "-0", "+7", "1e-320", "0.1e+2", "-NaN"]
    body = "".join(f"{t},{'ab'[i % 2]}\n" for i, t in enumerate(tokens))
    fast = data.check(project(tmp_path, "f,y\n" + body, schema=schema))
    exact = data.check(project(tmp_path, '"f",y\n' + body, schema=schema))  # a quote: csv.reader throughout
    expected = np.array([float(t) if t else float("nan") for t in tokens], dtype=np.float32)
    np.testing.assert_array_equal(fast.x[:, 0], expected)
    np.testing.assert_array_equal(exact.x[:, 0], expected)


def test_a_clean_file_never_goes_through_csv_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    real = data.csv.reader

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(data.csv, "reader", spy)
    assert len(data.check(project(tmp_path, BUNDLED.replace("\n", "\r\n")))) == 1797
    assert calls == []


def test_data_files_and_the_run_key_import_neither_numpy_nor_pyarrow(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "data", tmp_path / "data")
    shutil.copy(ROOT / "mlci.toml", tmp_path / "mlci.toml")
    code = (
        "import sys; from mlci.config import load_config; from mlci.data import data_files; "
        "from mlci.runkey import compute; c = load_config(sys.argv[1]); compute(c, data_files(c)); "
        "print(sorted(m for m in ('numpy', 'pyarrow') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "mlci.toml")], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_integer_columns_read_as_numbers_keep_every_value(tmp_path: Path) -> None:
    """An all-int schema lets chunks of digits go straight to float64: signs, zeros and big values as float()."""
    schema = '[label]\ncolumn = "y"\nclasses = [0, 1]\n[features]\nn = { dtype = "int" }\nm = { dtype = "int" }\n'
    tokens = ["-0", "+5", "007", "9007199254740993", "-9223372036854775809", "123456789012345678901234567890"]
    tokens = tokens * 400
    body = "".join(f"{t},{i},{i % 2}\n" for i, t in enumerate(tokens))
    ds = data.check(project(tmp_path, "n,m,y\n" + body, schema=schema))
    expected = np.array([float(t) for t in tokens], dtype=np.float64).astype(np.float32)
    assert ds.x[:, 0].tobytes() == expected.tobytes()  # bytes: -0.0 stays negative
    e = error(project(tmp_path, "n,m,y\n" + body + "1e1,5,0\n", schema=schema))
    assert (e.row, e.column, e.value) == (len(tokens) + 1, "n", "1e1") and "not an integer" in e.why


def chunk_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> list[tuple[int, int]]:
    """(first, last) data row of each chunk the real reader cuts `text` into (a spy around data._lines)."""
    seen: list[tuple[int, int]] = []
    real = data._lines

    def spy(chunk: bytes, records: data._Records, *args: object, **kwargs: object) -> None:
        before = records.rows
        real(chunk, records, *args, **kwargs)
        seen.append((before + 1, records.rows))

    monkeypatch.setattr(data, "_lines", spy)
    data.validate(project(tmp_path, text))
    monkeypatch.setattr(data, "_lines", real)
    return seen


@pytest.mark.parametrize("check", [data.check, data.validate], ids=["check", "check-only"])
def test_a_bad_value_in_the_last_row_of_a_chunk_and_in_the_first_of_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, check: object
) -> None:
    (_, last), (first, _) = chunk_rows(tmp_path, monkeypatch, BUNDLED)[3:5]
    assert first == last + 1
    for row in (last, first):
        with pytest.raises(DataError) as info:
            check(project(tmp_path, set_cell(BUNDLED, row, "px_4_4", "17")))  # type: ignore[operator]
        assert (info.value.row, info.value.column, info.value.value) == (row, "px_4_4", "17"), row
    both = set_cell(set_cell(BUNDLED, last, "px_4_4", "x"), first, "px_4_4", "-1")
    with pytest.raises(DataError) as info:
        check(project(tmp_path, both))  # type: ignore[operator]
    assert info.value.row == last and "not a number" in info.value.why


def test_the_check_that_keeps_no_rows_finds_duplicates_across_chunks_and_files(tmp_path: Path) -> None:
    rows = lines()
    rows.insert(1500, rows[4])
    with pytest.raises(DataError) as info:
        data.validate(project(tmp_path, "".join(rows)))
    assert (info.value.file, info.value.row) == ("f0.csv", 1500) and "duplicate of row 4 (" in info.value.why
    with pytest.raises(DataError) as info:
        data.validate(project(tmp_path, BUNDLED, rows[0] + rows[1200], rows[0] + rows[900]))
    assert (info.value.file, info.value.row) == ("f1.csv", 1) and "duplicate of row 1200 of f0.csv" in info.value.why
    assert data.validate(project(tmp_path, BUNDLED)) == 1797


def test_the_check_that_keeps_no_rows_confirms_equal_hashes_by_reading_the_rows_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data, "_mix", lambda h: h * np.uint64(0))  # every row a candidate
    assert data.validate(project(tmp_path, BUNDLED, lines()[0] + "0," * 64 + "3\n")) == 1798
    rows = lines()
    rows.insert(700, rows[650])
    with pytest.raises(DataError) as info:
        data.validate(project(tmp_path, "".join(rows)))
    assert info.value.row == 700 and "duplicate of row 650 (" in info.value.why


def test_loading_the_splits_in_place_gives_the_split_of_the_checked_data(tmp_path: Path) -> None:
    """The eval split of the bundled data must not move: existing runs' keys and champions depend on it."""
    config = project(tmp_path, BUNDLED)
    want_train, want_eval = data.split(data.check(config), config.data.eval_fraction, config.data.split_seed)
    got_train, got_eval = data.load_splits(config)
    np.testing.assert_array_equal(got_train.x, want_train.x)
    np.testing.assert_array_equal(got_train.y, want_train.y)
    np.testing.assert_array_equal(got_eval.x, want_eval.x)
    np.testing.assert_array_equal(got_eval.y, want_eval.y)
    assert got_train.x.dtype == np.float32 and got_train.x.flags.c_contiguous
    head, tail = lines()[:900], lines()[:1] + lines()[900:]  # two files: one array, grown in place
    (tmp_path / "two").mkdir()
    both = data.check(project(tmp_path / "two", "".join(head), "".join(tail)))
    np.testing.assert_array_equal(both.x, data.check(config).x)
