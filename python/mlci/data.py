"""The data check and the dataset the pipeline trains on.

`check(config)` reads every CSV in `config.data.files`, validates it against the schema (schema.py) and returns
all rows as one Dataset; the first problem raises DataError naming the file, the 1-based data row (the header
is not counted: row N is file line N+1), the column and the value. Byte-level problems (not UTF-8, binary
junk) name the file line instead, since no row can be parsed there.

numpy is imported inside functions only: `data_files` runs on the no-op path of `mlci train`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlci.config import Config
from mlci.errors import DataError
from mlci.schema import Column, Schema, load_schema, schema_path

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Dataset", "check", "data_files", "load_schema", "split"]

# ASCII digits only: float() would also take "٣" or "1_000", which no CSV writer means as numbers.
_INT = re.compile(r"[+-]?\d+", re.ASCII)
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_NAN = re.compile(r"[+-]?nan", re.IGNORECASE)
_INF = re.compile(r"[+-]?inf(?:inity)?", re.IGNORECASE)
# Control characters other than tab, CR and LF never occur in a text CSV: they mean binary junk.
_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True, eq=False)
class Dataset:
    features: list[str]  # feature column names, schema order
    classes: list[int | str]  # the schema's label set, in schema order; y holds indices into it
    x: np.ndarray  # float32, shape [n, len(features)]
    y: np.ndarray  # int64, shape [n]

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, rows: np.ndarray) -> Dataset:
        return Dataset(self.features, self.classes, self.x[rows], self.y[rows])


def data_files(config: Config) -> list[Path]:
    """The data files and the schema file, resolved. Cheap: no parsing, no numpy."""
    return [config.path(f).resolve() for f in config.data.files] + [schema_path(config).resolve()]


def check(config: Config) -> Dataset:
    """Validate every file in `config.data.files` against the schema; return all their rows."""
    import numpy as np

    schema = load_schema(config)
    parts = [_read(config.path(name), name, schema) for name in config.data.files]
    x = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    y = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    if not schema.allow_duplicate_rows:
        _no_duplicates(x, y, [(name, len(p[1])) for name, p in zip(config.data.files, parts, strict=True)])
    return Dataset(
        features=schema.feature_names,
        classes=list(schema.classes),
        x=x.astype(np.float32),
        y=y,
    )


def split(ds: Dataset, eval_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """(train, eval): a stratified split frozen by `seed`, the same for the same rows on any numpy/Python.

    Within each class, rows are ranked by a keyed hash of their content (ties by position) and the
    lowest round(n_class * eval_fraction) go to eval (at least one, and never the whole class when it has
    two rows or more). Because a row's rank depends on its content, appending new rows moves few old ones.
    """
    import numpy as np

    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be between 0 and 1 (exclusive), not {eval_fraction!r}")
    key = hashlib.sha256(str(seed).encode()).digest()
    x = np.ascontiguousarray(ds.x, dtype="<f4")
    y = np.ascontiguousarray(ds.y, dtype="<i8")
    ranks = [hashlib.blake2b(x[i].tobytes() + y[i].tobytes(), key=key, digest_size=16).digest() for i in range(len(y))]
    eval_rows: list[int] = []
    for label in sorted(set(y.tolist())):
        members = sorted(np.flatnonzero(y == label).tolist(), key=lambda i: (ranks[i], i))
        n = len(members)
        take = math.floor(n * eval_fraction + 0.5)
        take = min(max(take, 1), n - 1) if n >= 2 else 0
        eval_rows += members[:take]
    is_eval = np.zeros(len(y), dtype=bool)
    is_eval[eval_rows] = True
    if not is_eval.any() or is_eval.all():
        raise DataError("<data>", f"too few rows ({len(y)}) to split into train and eval sets")
    return ds.subset(np.flatnonzero(~is_eval)), ds.subset(np.flatnonzero(is_eval))


# --- one file -------------------------------------------------------------------------------------------


def _read(path: Path, name: str, schema: Schema) -> tuple[np.ndarray, np.ndarray]:
    """Parse and check one CSV: (x float64 [n, features] in schema order, y int64 [n])."""
    import numpy as np

    text = _text(path, name)
    header, rows = _rows(text, name)
    index = _header(header, name, schema)
    _widths(rows, len(header), text, name)
    columns = list(zip(*rows, strict=True))
    x = np.empty((len(rows), len(schema.features)), dtype=np.float64)
    for j, column in enumerate(schema.features):
        x[:, j] = _feature(columns[index[column.name]], column, name)
    y = _labels(columns[index[schema.label]], schema, name)
    return x, y


def _text(path: Path, name: str) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(name, f"file not found ({path})") from None
    except IsADirectoryError:
        raise DataError(name, "is a directory, not a CSV file") from None
    except OSError as exc:
        raise DataError(name, f"cannot be read ({exc.strerror})") from None
    if not data.strip():
        raise DataError(name, "the file is empty (expected a header row, then data rows)")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(name, "not UTF-8: the file is UTF-16 (it starts with a UTF-16 byte-order mark)")
    # Control bytes are ASCII, so they mean the same in any encoding: look for them before decoding, so that
    # binary junk is called binary rather than "not UTF-8".
    junk = _CONTROL_BYTES.search(data)
    if junk:
        line = data.count(b"\n", 0, junk.start()) + 1
        raise DataError(
            name,
            f"binary or garbled content: control byte 0x{junk.group()[0]:02x} at file line {line} "
            f"(byte offset {junk.start()})",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        why = f"not UTF-8: byte 0x{data[exc.start]:02x} at file line {line} (byte offset {exc.start}) "
        if exc.end == len(data) and "unexpected end" in exc.reason:
            why += "starts a character the file ends inside of: the file looks truncated"
        else:
            why += "cannot be decoded; save the file as UTF-8"
        raise DataError(name, why) from None
    text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark, as spreadsheet programs write
    if not text.strip():
        raise DataError(name, "the file is empty (expected a header row, then data rows)")
    return text


def _rows(text: str, name: str) -> tuple[list[str], list[list[str]]]:
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error:
        _garbled(text, name)  # parse again, slowly, to say where
        raise
    while rows and not rows[-1]:  # blank lines at the very end lose nothing; tolerate them
        rows.pop()
    if not rows or not any(rows[0]):
        raise DataError(name, "line 1 must be the header row, but it is blank")
    if len(rows) == 1:
        raise DataError(name, "no data rows after the header")
    return rows[0], rows[1:]


def _garbled(text: str, name: str) -> None:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows, line = 0, 0  # line: the file line the last complete record ended on
    try:
        for _ in reader:
            rows, line = rows + 1, reader.line_num
    except csv.Error as exc:
        where = f"row {rows}" if rows else "the header"
        raise DataError(
            name,
            f"garbled CSV in the record that starts at file line {line + 1} ({where}): {exc}"
            + ("; look for an unbalanced quote" if "field limit" in str(exc) else ""),
        ) from None


def _widths(rows: list[list[str]], width: int, text: str, name: str) -> None:
    """Every row has as many fields as the header; a short last line without a newline is a truncated file."""
    if set(map(len, rows)) == {width}:
        return
    for i, row in enumerate(rows):
        if len(row) == width:
            continue
        last = i == len(rows) - 1
        if not row:
            raise DataError(name, "blank line; every row needs all columns", row=i + 1)
        why = f"has {len(row)} fields but the header has {width}"
        if last and not text.endswith(("\n", "\r")):
            why += "; the last line has no newline: the file looks truncated"
        raise DataError(name, why, row=i + 1, value=",".join(row) if len(row) < 8 else None)


def _header(header: list[str], name: str, schema: Schema) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, column in enumerate(header):
        if column in index:
            raise DataError(
                name, f"the header names this column twice (fields {index[column] + 1} and {i + 1})", column=column
            )
        index[column] = i
    wanted = set(schema.columns)
    extra = [c for c in header if c not in wanted]
    for column in schema.columns:
        if column not in index:
            why = f"missing from the header (line 1); the schema {schema.file} requires it"
            if extra:
                why += f"; the header has unknown column(s) {', '.join(map(repr, extra))}"
            raise DataError(name, why, column=column)
    if extra:
        if extra[0] == "":
            field = header.index("") + 1
            raise DataError(name, f"header field {field} is empty (a trailing comma?); the schema names every column")
        raise DataError(name, f"not in the schema {schema.file} (line 1 is the header)", column=extra[0])
    return index


def _feature(cells: Sequence[str], column: Column, name: str) -> np.ndarray:
    """Check one feature column; its values as float64. The first bad cell (by row) raises DataError."""
    import numpy as np

    distinct = set(cells)
    if len(distinct) * 4 > len(cells):
        return _feature_wide(cells, column, name)
    # Few distinct values (counts, categories, pixels): check each distinct token once.
    values: dict[str, float] = {}
    bad: dict[str, str] = {}
    for token in distinct:
        why = _bad_token(token, column)
        if why is None:
            value = float(token) if token else math.nan
            why = _out_of_range(value, column)
            if why is None:
                values[token] = value
                continue
        bad[token] = why
    if bad:  # report the column's first bad cell, whatever order the set came in
        row, token = _first(cells, bad)
        raise DataError(name, bad[token], row=row, column=column.name, value=_shown(token))
    return np.fromiter(map(values.__getitem__, cells), np.float64, len(cells))


def _feature_wide(cells: Sequence[str], column: Column, name: str) -> np.ndarray:
    """Many distinct values (real-valued data): one regex match per cell, then vectorized range checks."""
    import numpy as np

    number = _INT if column.dtype == "int" else _FLOAT
    first_bad: tuple[int, str] | None = None
    if not all(map(number.fullmatch, cells)):  # rare: NaN/empty where allowed, or an error to locate
        cells = list(cells)
        for i, cell in enumerate(cells):
            if number.fullmatch(cell):
                continue
            why = _bad_token(cell, column)
            if why is not None:
                first_bad = (i, why)
                break
            cells[i] = "nan"  # an empty field or NaN token where the schema allows NaN
    end = first_bad[0] if first_bad else len(cells)
    try:  # numpy parses the validated decimal tokens exactly as float() does, and faster
        values = np.array(cells[:end], dtype=np.float64)
    except (ValueError, OverflowError):
        values = np.fromiter(map(float, cells[:end]), np.float64, end)
    outside = np.isinf(values)
    if column.min is not None:
        outside |= values < column.min
    if column.max is not None:
        outside |= values > column.max
    if outside.any():  # before first_bad, so it is the first bad cell by row
        i = int(outside.argmax())
        why = _out_of_range(float(values[i]), column) or "out of range"
        raise DataError(name, why, row=i + 1, column=column.name, value=_shown(cells[i]))
    if first_bad:
        i, why = first_bad
        raise DataError(name, why, row=i + 1, column=column.name, value=_shown(cells[i]))
    return values


def _bad_token(token: str, column: Column) -> str | None:
    if token == "" or _NAN.fullmatch(token):
        if column.nan:
            return None
        return "empty field (a missing value): NaN is not allowed" if token == "" else "NaN is not allowed"
    if _INF.fullmatch(token):
        return "infinite values are not allowed"
    if column.dtype == "int":
        if _INT.fullmatch(token):
            return None
        if _FLOAT.fullmatch(token):
            return "not an integer (the schema's dtype for this column is int)"
        return "not a number (the schema's dtype for this column is int)"
    if _FLOAT.fullmatch(token):
        return None
    return "not a number (the schema's dtype for this column is float)"


def _shown(token: str) -> str:
    """A cell as it goes into a message: long ones cut, so that one bad cell cannot flood the terminal."""
    return token if len(token) <= 40 else f"{token[:37]}..."


def _first(cells: Sequence[str], bad: set[str] | dict[str, str]) -> tuple[int, str]:
    """The 1-based row and token of the first cell in `bad`."""
    i = next(i for i, c in enumerate(cells) if c in bad)
    return i + 1, cells[i]


def _out_of_range(value: float, column: Column) -> str | None:
    if math.isinf(value):
        return "too large for a 64-bit float"
    if column.min is not None and value < column.min:
        return f"below the schema's min ({column.min})"
    if column.max is not None and value > column.max:
        return f"above the schema's max ({column.max})"
    return None


def _labels(cells: Sequence[str], schema: Schema, name: str) -> np.ndarray:
    import numpy as np

    lookup = {str(c): i for i, c in enumerate(schema.classes)}
    ints = {c: i for i, c in enumerate(schema.classes) if isinstance(c, int)}
    bad = set()
    for token in set(cells):
        if token in lookup:
            continue
        if ints and len(token) < 30 and _INT.fullmatch(token) and int(token) in ints:  # "07" or "+7" for class 7
            lookup[token] = ints[int(token)]
        else:
            bad.add(token)
    if bad:
        row, token = _first(cells, bad)
        shown = ", ".join(map(str, schema.classes[:20])) + (", ..." if len(schema.classes) > 20 else "")
        why = f"not in the label set of the schema {schema.file} ({shown})"
        raise DataError(name, why, row=row, column=schema.label, value=_shown(token))
    return np.array([lookup[c] for c in cells], dtype=np.int64)


# --- across files ---------------------------------------------------------------------------------------


def _no_duplicates(x: np.ndarray, y: np.ndarray, files: list[tuple[str, int]]) -> None:
    import numpy as np

    table = np.ascontiguousarray(np.column_stack([x, y.astype(np.float64)]))
    keys = table.view(np.dtype((np.void, table.dtype.itemsize * table.shape[1]))).ravel().tolist()
    if len(set(keys)) == len(keys):
        return
    seen: dict[bytes, int] = {}
    for i, k in enumerate(keys):
        if k in seen:
            first_file, first_row = _where(seen[k], files)
            file, row = _where(i, files)
            where = f"row {first_row}" + ("" if first_file == file else f" of {first_file}")
            raise DataError(
                file,
                f"duplicate of {where} (same features and label); "
                "set options.allow_duplicate_rows = true in the schema to allow it",
                row=row,
            )
        seen[k] = i


def _where(i: int, files: list[tuple[str, int]]) -> tuple[str, int]:
    """Global row index -> (file, 1-based data row in that file)."""
    for name, n in files:
        if i < n:
            return name, i + 1
        i -= n
    raise IndexError(i)
