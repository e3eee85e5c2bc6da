"""Parquet data files: the same checks as a CSV's, on typed columns, read a batch at a time.

The file's column types are checked against the schema first (an int feature needs an integer column, a float
feature an integer or floating one, the label the kind of the label set); then the values as for CSV: a null or
NaN where the schema forbids it, infinities, ranges, labels. Rows are numbered from 1 in the file's order, and
the first bad cell of the first column (schema order, label last) that has one is reported, as for CSV. The rows
go through data._Records, so they are kept and hashed (duplicates) exactly as a CSV's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlci.errors import DataError
from mlci.schema import Column, Schema

if TYPE_CHECKING:
    import numpy as np

_BATCH = 1 << 14  # rows read at a time (a batch takes far more memory than its values: measured, 64Ki rows ~240 MB)


def read_parquet(path: Path, name: str, records_for: Callable[[int], Any]) -> np.ndarray:
    """Check one Parquet file; `records_for(rows)` makes the data._Records its rows go to. Its row hashes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # No pre-buffering: it read ahead whole row groups, up to the whole file (a 390 MB file: +400 MB).
        file = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
    except FileNotFoundError:
        raise DataError(name, f"file not found ({path})") from None
    except IsADirectoryError:
        raise DataError(name, "is a directory, not a Parquet file") from None
    except OSError as exc:
        raise DataError(name, f"cannot be read ({exc.strerror})") from None
    except (pa.ArrowException, ValueError) as exc:
        raise DataError(name, f"not a readable Parquet file ({exc})") from None
    rows = file.metadata.num_rows
    records = records_for(rows)
    schema: Schema = records.schema
    _check_columns(file.schema_arrow, name, schema)
    if rows == 0:
        raise DataError(name, "no data rows")
    records.index = {c: i for i, c in enumerate(schema.columns)}
    start = 0
    try:
        for batch in file.iter_batches(batch_size=_BATCH, columns=schema.columns):
            _check_batch(batch, start, name, schema, records)
            start += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise DataError(name, f"cannot be read as Parquet after row {start} ({exc})") from None
    records.rows = start
    return records.result()


def _check_columns(found: Any, name: str, schema: Schema) -> None:
    """Every schema column present, none unknown, each of a type its dtype can take."""
    import pyarrow.types as t

    names = list(found.names)
    for column in schema.columns:
        if column not in names:
            why = f"missing from the file's columns; the schema {schema.file} requires it"
            extra = [c for c in names if c not in schema.columns]
            if extra:
                why += f"; the file has unknown column(s) {', '.join(map(repr, extra))}"
            raise DataError(name, why, column=column)
    for column in names:
        if column not in schema.columns:
            raise DataError(name, f"not in the schema {schema.file}", column=column)
    for column in schema.features:
        kind = found.field(column.name).type
        ok = t.is_integer(kind) or (column.dtype == "float" and t.is_floating(kind))
        if not ok:
            wanted = "an integer type" if column.dtype == "int" else "an integer or floating type"
            raise DataError(
                name,
                f"the file's column type is {kind}; expected {wanted} (the schema's dtype is {column.dtype})",
                column=column.name,
            )
    kind = found.field(schema.label).type
    if t.is_dictionary(kind):
        kind = kind.value_type
    ints = isinstance(schema.classes[0], int)
    if not (t.is_integer(kind) if ints else t.is_string(kind) or t.is_large_string(kind)):
        wanted = "an integer type (the label set is integers)" if ints else "a string type (the label set is strings)"
        raise DataError(name, f"the file's column type is {kind}; expected {wanted}", column=schema.label)


def _check_batch(batch: Any, start: int, name: str, schema: Schema, records: Any) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    x: list[np.ndarray] = []
    for place, column in enumerate(schema.features):
        if records.cell is not None and place >= records.cell[0]:
            return  # a column before this one has a bad cell already: the file fails with it
        cells = batch.column(column.name)
        values = pc.cast(cells, pa.float64(), safe=False).to_numpy(zero_copy_only=False)  # nulls become NaN
        bad = _first_bad(values, cells.is_null().to_numpy(zero_copy_only=False), column)
        if bad is not None:
            i, why = bad
            records.cell = (place, DataError(name, why, row=start + i + 1, column=column.name, value=_shown(cells[i])))
            return
        x.append(values)
    if records.cell is not None:
        return
    labels = batch.column(schema.label)
    if pa.types.is_dictionary(labels.type):
        labels = labels.cast(labels.type.value_type)
    if isinstance(schema.classes[0], int):
        labels = labels.cast(pa.int64())
    found = pc.index_in(labels, value_set=pa.array(list(schema.classes)))
    if found.null_count:
        i = int(np.flatnonzero(found.is_null().to_numpy(zero_copy_only=False))[0])
        shown = ", ".join(map(str, schema.classes[:20])) + (", ..." if len(schema.classes) > 20 else "")
        why = f"not in the label set of the schema {schema.file} ({shown})"
        records.cell = (len(schema.features), DataError(name, why, row=start + i + 1, column=schema.label,
                                                          value=_shown(labels[i])))  # fmt: skip
        return
    records.keep(x, found.to_numpy(zero_copy_only=False).astype(np.int64))


def _first_bad(values: np.ndarray, null: np.ndarray, column: Column) -> tuple[int, str] | None:
    """(index, why) of the first value the column's rules refuse, or None."""
    import numpy as np

    nan = np.isnan(values)
    bad = np.isinf(values)
    if not column.nan:
        bad |= nan
    if column.min is not None:
        bad |= values < column.min
    if column.max is not None:
        bad |= values > column.max
    if not bad.any():
        return None
    i = int(bad.argmax())
    if null[i]:
        return i, "a null (a missing value): NaN is not allowed"
    if nan[i]:
        return i, "NaN is not allowed"
    if np.isinf(values[i]):
        return i, "infinite values are not allowed"
    if column.min is not None and values[i] < column.min:
        return i, f"below the schema's min ({column.min})"
    return i, f"above the schema's max ({column.max})"


def _shown(scalar: Any) -> str:
    value = scalar.as_py()
    return "null" if value is None else str(value)
