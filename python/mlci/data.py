"""The data check and the dataset the pipeline trains on.

`check(config)` reads every file in `config.data.files` (globs expanded, sorted; CSV, or Parquet: parquet.py),
validates it against the schema (schema.py) and returns all rows as one Dataset; `validate(config)` runs the same
checks keeping no rows (`mlci data`); `load_splits(config)` gives the train and eval splits in about the memory of
the data once. The first problem raises DataError naming the file, the 1-based data row (the header is not counted:
row N is file line N+1), the column and the value. Byte-level problems (not UTF-8, binary junk) name the file line
instead, since no row can be parsed there.

Files are read in chunks (see "one file" below): memory holds the rows kept (a float32 array filled in place, or
none) and one chunk, whatever the file's size. numpy and pyarrow are imported inside functions only: `data_files`
runs on the no-op path of `mlci train`.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlci.config import Config
from mlci.errors import ConfigError, DataError
from mlci.schema import Column, Schema, load_schema, schema_path

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Dataset", "check", "data_files", "load_schema", "load_splits", "split", "validate"]

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
    return [config.path(f).resolve() for f in file_names(config)] + [schema_path(config).resolve()]


def file_names(config: Config) -> list[str]:
    """`data.files` with each glob (`*`, `?`, `[...]`) expanded, sorted, relative to mlci.toml as written: a new
    file in a data directory changes the run key. A glob that matches no file is a config error."""
    names: list[str] = []
    for entry in config.data.files:
        if not glob.has_magic(entry):
            names.append(entry)
            continue
        base = config.path(".")
        matches = sorted(m for m in glob.glob(entry, root_dir=base) if Path(config.path(m)).is_file())
        if not matches:
            raise ConfigError(config.source, "data.files", entry, f"the pattern matches no file (in {base.resolve()})")
        names.extend(matches)
    return names


def check(config: Config) -> Dataset:
    """Validate every file in `config.data.files` against the schema; return all their rows (one float32 array,
    filled chunk by chunk: no second copy)."""
    schema = load_schema(config)
    rows = _All(len(schema.features))
    counts, hashes = _check_files(config, schema, rows)
    x, y = rows.arrays()
    if not schema.allow_duplicate_rows:
        _no_duplicates(hashes, counts, lambda at: (x[at], y[at]))
    return Dataset(features=schema.feature_names, classes=list(schema.classes), x=x, y=y)


def validate(config: Config) -> int:
    """The same checks and messages as `check`, keeping no rows: memory holds one chunk and 8 bytes a row (the row
    hashes that find duplicates; the rare candidates are read again to compare them exactly). The row count."""
    schema = load_schema(config)
    counts, hashes = _check_files(config, schema, None)
    if not schema.allow_duplicate_rows:
        _no_duplicates(hashes, counts, lambda at: _reread(config, schema, counts, at))
    return sum(n for _, n in counts)


def load_splits(config: Config) -> tuple[Dataset, Dataset]:
    """`split(check(config), ...)` with the configured fraction and seed, in about the memory of the data once:
    the training rows are moved to the front of the checked array, in place, and the train split is a view of it."""
    import numpy as np

    ds = check(config)
    is_eval = _eval_rows(ds.x, ds.y, config.data.eval_fraction, config.data.split_seed)
    held_out = ds.subset(np.flatnonzero(is_eval))
    train_rows = np.flatnonzero(~is_eval)
    del is_eval
    step = 1 << 16
    for start in range(0, len(train_rows), step):  # forward: a row never lands on one not yet moved
        at = train_rows[start : start + step]
        ds.x[start : start + len(at)] = ds.x[at]
        ds.y[start : start + len(at)] = ds.y[at]
    n = len(train_rows)
    return Dataset(ds.features, ds.classes, ds.x[:n], ds.y[:n]), held_out


def split(ds: Dataset, eval_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """(train, eval): a stratified split frozen by `seed`, the same for the same rows on any numpy/Python.

    Within each class, rows are ranked by a keyed hash of their content (ties by position) and the
    lowest round(n_class * eval_fraction) go to eval (at least one, and never the whole class when it has
    two rows or more). Because a row's rank depends on its content, appending new rows moves few old ones.
    """
    import numpy as np

    is_eval = _eval_rows(ds.x, ds.y, eval_fraction, seed)
    return ds.subset(np.flatnonzero(~is_eval)), ds.subset(np.flatnonzero(is_eval))


def _eval_rows(x: np.ndarray, y: np.ndarray, eval_fraction: float, seed: int) -> np.ndarray:
    """The split's eval rows as a mask. Vectorised, and equal to ranking each class's rows with
    sorted(key=(blake2b digest of the row's <f4 features and <i8 label, position))."""
    import numpy as np

    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be between 0 and 1 (exclusive), not {eval_fraction!r}")
    n = len(y)
    digests = _row_digests(x, y, hashlib.sha256(str(seed).encode()).digest())
    # Digests compare as bytes: as two big-endian 64-bit halves. Sorted by class, then digest, then position.
    order = np.lexsort((np.arange(n), digests[:, 1], digests[:, 0], y))
    del digests
    labels = y[order]
    starts = np.flatnonzero(np.concatenate([[True], labels[1:] != labels[:-1]])) if n else np.zeros(0, np.int64)
    sizes = np.diff(np.append(starts, n))
    take = np.floor(sizes * eval_fraction + 0.5).astype(np.int64)
    take = np.where(sizes >= 2, np.minimum(np.maximum(take, 1), sizes - 1), 0)
    place = np.arange(n) - np.repeat(starts, sizes)  # the rank within its class
    is_eval = np.zeros(n, dtype=bool)
    is_eval[order[place < np.repeat(take, sizes)]] = True
    if not is_eval.any() or is_eval.all():
        raise DataError("<data>", f"too few rows ({n}) to split into train and eval sets")
    return is_eval


def _row_digests(x: np.ndarray, y: np.ndarray, key: bytes) -> np.ndarray:
    """[n, 2] big-endian uint64: each row's keyed 16-byte blake2b digest, a block of rows at a time."""
    import numpy as np

    n = len(y)
    out = np.empty((n, 2), dtype=">u8")
    step = 1 << 16
    for start in range(0, n, step):
        xs = np.ascontiguousarray(x[start : start + step], dtype="<f4")
        ys = np.ascontiguousarray(y[start : start + step], dtype="<i8")
        m = len(ys)
        block = np.concatenate([xs.view(np.uint8).reshape(m, -1), ys.view(np.uint8).reshape(m, 8)], axis=1)
        width, flat = block.shape[1], memoryview(block.tobytes())
        blake = hashlib.blake2b
        digests = [blake(flat[i : i + width], key=key, digest_size=16).digest() for i in range(0, m * width, width)]
        joined = b"".join(digests)
        out[start : start + m] = np.frombuffer(joined, dtype=">u8").reshape(m, 2)
    return out


# --- where checked rows go --------------------------------------------------------------------------------


class _All:
    """Every row of every file, in one float32 array grown in place (realloc: a big block is remapped, not copied)."""

    def __init__(self, features: int) -> None:
        import numpy as np

        self.x = np.empty((0, features), dtype=np.float32)
        self.y = np.empty(0, dtype=np.int64)
        self.n = 0

    def reserve(self, rows: int) -> None:
        if rows > len(self.y):
            self.x.resize((rows, self.x.shape[1]), refcheck=False)
            self.y.resize(rows, refcheck=False)

    def put(self, at: int, columns: list[np.ndarray], y: np.ndarray) -> None:
        for place, values in enumerate(columns):
            self.x[at : at + len(y), place] = values
        self.y[at : at + len(y)] = y
        self.n = at + len(y)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The rows put, the arrays trimmed to them in place."""
        self.x.resize((self.n, self.x.shape[1]), refcheck=False)
        self.y.resize(self.n, refcheck=False)
        return self.x, self.y


class _Picked:
    """Only the rows at given global positions (sorted): the duplicate candidates, read a second time."""

    def __init__(self, features: int, wanted: np.ndarray) -> None:
        import numpy as np

        self.wanted = wanted
        self.x = np.empty((len(wanted), features), dtype=np.float32)
        self.y = np.empty(len(wanted), dtype=np.int64)

    def reserve(self, rows: int) -> None:
        pass

    def put(self, at: int, columns: list[np.ndarray], y: np.ndarray) -> None:
        import numpy as np

        lo, hi = np.searchsorted(self.wanted, [at, at + len(y)])
        if lo == hi:
            return
        rows = self.wanted[lo:hi] - at
        for place, values in enumerate(columns):
            self.x[lo:hi, place] = values[rows]
        self.y[lo:hi] = y[rows]


_Sink = _All | _Picked


def _check_files(config: Config, schema: Schema, sink: _Sink | None) -> tuple[list[tuple[str, int]], list[np.ndarray]]:
    """Check every file in order; ([(file, rows)], [its row hashes]). The rows go to `sink` (None: nowhere)."""
    counts: list[tuple[str, int]] = []
    hashes = []
    base = 0
    for name in file_names(config):
        h = _read(config.path(name), name, schema, sink, base)
        counts.append((name, len(h)))
        hashes.append(h)
        base += len(h)
    return counts, hashes


def _reread(config: Config, schema: Schema, counts: list[tuple[str, int]], at: np.ndarray) -> tuple[Any, Any]:
    """The rows at global positions `at` (sorted), read again from the files that hold them."""
    picked = _Picked(len(schema.features), at)
    base = 0
    for name, n in counts:
        if ((at >= base) & (at < base + n)).any():
            _read(config.path(name), name, schema, picked, base)
        base += n
    return picked.x, picked.y


# --- one file -------------------------------------------------------------------------------------------
#
# A file is read twice, in blocks, never whole: first its bytes (_scan: emptiness, UTF-16, control bytes, UTF-8),
# then its records. A file without quotes, lone CRs or very long lines (nearly every numeric CSV) has one record
# per line: it is cut at line ends into chunks that pyarrow parses (straight to numbers where only integers can be
# in them, else as strings) and numpy/pyarrow check a column at a time; a chunk with anything unusual in it, and
# every other file, goes through csv.reader and the per-cell checks below, which say exactly where. The order of
# the checks is that of reading the whole file first: byte-level problems, then garbled quoting anywhere, a blank
# header or no data rows, the header, the first row of the wrong width, then the first bad cell of the first
# column (schema order, label last) that has one.

_BLOCK = 1 << 22  # bytes read at a time; about the size of one parsed chunk (which takes ~15x in memory)
_BATCH = 1 << 16  # records checked at a time on the csv.reader path
_UTF8_BOM = b"\xef\xbb\xbf"
_NOT_CONTROL = bytes(b for b in range(256) if not _CONTROL_BYTES.fullmatch(bytes([b])))
_INT_BYTES = b"0123456789+-"
_FLOAT_BYTES = _INT_BYTES + b".eE"
_NAN_BYTES = _FLOAT_BYTES + b"nNaA"


@dataclass(frozen=True)
class _Scan:
    simple: bool  # no quote, no lone CR and no line as long as csv's field limit: one record per line
    ends_with_newline: bool
    most_rows: int  # at least as many as the data records


def _read(path: Path, name: str, schema: Schema, sink: _Sink | None, base: int) -> np.ndarray:
    """Parse and check one file (CSV, or Parquet by its suffix); its rows go to `sink` from global position `base`.
    Returns the rows' 64-bit hashes."""
    if path.suffix.lower() == ".parquet":
        from mlci.parquet import read_parquet

        return read_parquet(path, name, lambda rows: _Records(name, schema, _Scan(True, True, rows), sink, base))
    scan = _scan(path, name)
    records = _Records(name, schema, scan, sink, base)
    try:
        if scan.simple:
            _read_lines(path, records)
        else:
            _read_csv(path, records)
    except OSError as exc:  # the file went away or broke while being read
        raise DataError(name, f"cannot be read ({exc.strerror})") from None
    return records.result()


def _scan(path: Path, name: str) -> _Scan:
    """Byte-level checks over the whole file, in blocks; the same messages as checking it in one piece."""
    import codecs

    import numpy as np

    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise DataError(name, f"file not found ({path})") from None
    except IsADirectoryError:
        raise DataError(name, "is a directory, not a CSV file") from None
    except OSError as exc:
        raise DataError(name, f"cannot be read ({exc.strerror})") from None
    limit = csv.field_size_limit()
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = newlines = 0
    last_newline = -1
    nonspace = content = quoted = lone_cr = long_line = False
    control: tuple[int, int, int] | None = None  # byte offset, byte, file line
    bad_utf8: tuple[int, int, int, bool] | None = None  # byte offset, byte, file line, at the very end
    tail = b""
    carriage_returns = 0
    try:
        with f:
            block = f.read(_BLOCK)
            while block:
                following = f.read(_BLOCK)
                final = not following
                if offset == 0 and block.startswith((b"\xff\xfe", b"\xfe\xff")):
                    raise DataError(name, "not UTF-8: the file is UTF-16 (it starts with a UTF-16 byte-order mark)")
                nonspace = nonspace or bool(block.strip())
                if control is None and block.translate(None, _NOT_CONTROL):
                    junk = _CONTROL_BYTES.search(block)
                    assert junk is not None
                    line = newlines + block.count(b"\n", 0, junk.start()) + 1
                    control = (offset + junk.start(), junk.group()[0], line)
                if control is None and bad_utf8 is None:
                    pending = len(decoder.getstate()[0])
                    if pending or not block.isascii():
                        try:
                            text = decoder.decode(block, final)
                        except UnicodeDecodeError as exc:
                            at = exc.start - pending  # into this block; < 0: in the previous block's tail
                            line = newlines + block.count(b"\n", 0, max(at, 0)) + 1
                            at_end = final and exc.end == len(exc.object) and "unexpected end" in exc.reason
                            bad_utf8 = (offset + at, exc.object[exc.start], line, at_end)
                        else:
                            content = content or bool((text.removeprefix("\ufeff") if offset == 0 else text).strip())
                    else:
                        content = content or bool(block.strip())
                quoted = quoted or b'"' in block
                crs = block.count(b"\r")
                carriage_returns += crs
                lone_cr = lone_cr or crs != block.count(b"\r\n")
                ends = np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
                if not long_line:
                    starts = np.concatenate([[last_newline - offset], ends])
                    stops = np.concatenate([ends, [len(block)]])
                    long_line = bool((stops - starts).max() > limit)
                if len(ends):
                    last_newline = offset + int(ends[-1])
                newlines += len(ends)
                offset += len(block)
                tail = block[-1:]
                block = following
    except OSError as exc:
        raise DataError(name, f"cannot be read ({exc.strerror})") from None
    empty = "the file is empty (expected a header row, then data rows)"
    if not nonspace:
        raise DataError(name, empty)
    if control is not None:
        at, byte, line = control
        raise DataError(
            name, f"binary or garbled content: control byte 0x{byte:02x} at file line {line} (byte offset {at})"
        )
    if bad_utf8 is not None:
        at, byte, line, at_end = bad_utf8
        why = f"not UTF-8: byte 0x{byte:02x} at file line {line} (byte offset {at}) "
        if at_end:
            why += "starts a character the file ends inside of: the file looks truncated"
        else:
            why += "cannot be decoded; save the file as UTF-8"
        raise DataError(name, why)
    if not content:
        raise DataError(name, empty)
    return _Scan(
        simple=not (quoted or lone_cr or long_line),
        ends_with_newline=tail in (b"\n", b"\r"),
        most_rows=newlines + (carriage_returns if lone_cr else 0) + 1,
    )


class _Records:
    """The checks on one file's records, fed in order in batches; remembers the first problem of each kind."""

    def __init__(self, name: str, schema: Schema, scan: _Scan, sink: _Sink | None, base: int) -> None:
        import numpy as np

        self.name, self.schema, self.scan = name, schema, scan
        self.header: list[str] | None = None
        self.index: dict[str, int] = {}
        self.rows = 0  # data records so far, blank ones included
        self.blank: int | None = None  # the row of a blank record not yet known to be trailing
        self.problem: DataError | None = None  # blank header, header, row width: outranks any bad cell
        self.cell: tuple[int, DataError] | None = None  # (column's place: features, then label; its first bad)
        self.classes = [str(c) for c in schema.classes]
        # The rows kept so far (all of them while nothing is wrong) go to the sink, from global position base + kept;
        # their hashes stay here, in an array sized once (pages past the end are never touched, so take no memory).
        # The float64 values exist only a chunk at a time.
        self.sink, self.base, self.kept = sink, base, 0
        if sink is not None:
            sink.reserve(base + scan.most_rows)
        self.hashes = np.empty(scan.most_rows, dtype=np.uint64)

    # -- the header ---------------------------------------------------------------------------------------

    def first(self, header: list[str]) -> None:
        self.header = header
        if not any(header):
            self.fail(DataError(self.name, "line 1 must be the header row, but it is blank"))

    def data_starts(self) -> None:
        """The first non-blank record after the header exists: the header's turn (after 'no data rows')."""
        if self.problem is None and self.header is not None and not self.index:
            try:
                self.index = _header(self.header, self.name, self.schema)
            except DataError as exc:
                self.fail(exc)

    def fail(self, problem: DataError) -> None:
        if self.problem is None:
            self.problem = problem

    # -- records ------------------------------------------------------------------------------------------

    def feed(self, records: list[list[str]], *, final: bool) -> None:
        """Check the next data records (csv.reader's lists). `final`: nothing follows them in the file."""
        if final:
            while records and not records[-1]:  # blank lines at the very end lose nothing; tolerate them
                records.pop()
        start = self.rows
        self.rows += len(records)
        if not records or self.problem is not None:
            return
        if not self.index:
            first_data = next((i for i, r in enumerate(records) if r), None)
            if first_data is None:
                self.blank = self.blank or start + 1
                return
            self.data_starts()
            if self.problem is not None:
                return
        width = len(self.index)
        if self.blank is None and set(map(len, records)) == {width}:
            self.cells(records, start)
            return
        complete = len(records)  # records before the first blank one
        for i, row in enumerate(records, start + 1):
            if not row:
                self.blank = self.blank or i
                complete = min(complete, i - start - 1)
                continue
            if self.blank is not None:
                self.fail(DataError(self.name, "blank line; every row needs all columns", row=self.blank))
                return
            if len(row) != width:
                why = f"has {len(row)} fields but the header has {width}"
                if final and i == self.rows and not self.scan.ends_with_newline:
                    why += "; the last line has no newline: the file looks truncated"
                value = ",".join(row) if len(row) < 8 else None
                self.fail(DataError(self.name, why, row=i, value=value))
                return
        # Reached with blank records pending at the end of a batch that is not the last.
        self.cells(records[:complete], start)

    def cells(self, records: list[list[str]], start: int) -> None:
        """Check every cell of records of the right width (rows start+1...); keep their arrays."""

        if not records:
            return
        columns = list(zip(*records, strict=True))
        x: list[np.ndarray] = []
        for place, column in enumerate([*self.schema.features, None]):
            if self.cell is not None and place >= self.cell[0]:
                return
            try:
                if column is None:
                    y = _labels(columns[self.index[self.schema.label]], self.schema, self.name)
                else:
                    x.append(_feature(columns[self.index[column.name]], column, self.name))
            except DataError as exc:
                row = None if exc.row is None else exc.row + start
                self.cell = (place, DataError(self.name, exc.why, row=row, column=exc.column, value=exc.value))
        if self.cell is None:
            self.keep(x, y)

    def keep(self, x: list[np.ndarray], y: np.ndarray) -> None:
        """Store the next rows: each feature's float64 values (schema order) and the labels."""
        import numpy as np

        at, n = self.kept, len(y)
        h = np.full(n, 0x9E3779B97F4A7C15, dtype=np.uint64)
        for place, values in enumerate(x):
            if self.schema.features[place].nan:  # one NaN: "-nan" is the same missing value as "" or "nan"
                x[place] = values = np.where(np.isnan(values), np.nan, values)
            h = _fold(h, values)
        self.hashes[at : at + n] = _mix(_fold(h, y.astype(np.float64)))
        if self.sink is not None:
            self.sink.put(self.base + at, x, y)
        self.kept += n

    def table(self, table: Any, n: int) -> bool:
        """Check n records that pyarrow parsed (features as strings, or as float64 where _lines says they may be);
        False when anything is not plainly right (the caller then checks them through csv.reader, which says
        exactly what and where)."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        if self.problem is not None or self.blank is not None or table.num_rows != n:
            return False
        limit = csv.field_size_limit()
        x: list[np.ndarray] = []
        for column in self.schema.features:
            cells = table.column(column.name).combine_chunks()
            if cells.null_count:
                return False
            if cells.type == pa.float64():
                x.append(cells.to_numpy())
                continue
            offsets = np.frombuffer(cells.buffers()[1], np.int32, n + 1, cells.offset * 4)
            lengths = np.diff(offsets)
            if lengths.max(initial=0) >= limit:
                return False
            size = int(offsets[-1] - offsets[0])
            chars = np.frombuffer(cells.buffers()[2], np.uint8, size, int(offsets[0])) if size else offsets[:0]
            allowed = _NAN_BYTES if column.nan else _INT_BYTES if column.dtype == "int" else _FLOAT_BYTES
            if not _byte_set(allowed)[chars].all():
                return False
            if not lengths.all():
                if not column.nan:
                    return False
                cells = pc.if_else(pc.equal(cells, ""), pa.scalar("nan"), cells)
            try:  # over these bytes, what pyarrow parses is exactly what the token checks accept, to the same value
                values = pc.cast(cells, pa.float64()).to_numpy(zero_copy_only=False)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return False
            x.append(values)
        for column, values in zip(self.schema.features, x, strict=True):
            outside = np.isinf(values)
            if column.min is not None:
                outside |= values < column.min
            if column.max is not None:
                outside |= values > column.max
            if outside.any():
                return False
        labels = table.column(self.schema.label).combine_chunks()
        found = pc.index_in(labels, value_set=pa.array(self.classes, pa.string()))
        if found.null_count:
            return False
        self.rows += n
        if self.cell is None:  # with a bad cell found already, the file fails: keep nothing
            self.keep(x, found.to_numpy(zero_copy_only=False).astype(np.int64))
        return True

    def result(self) -> np.ndarray:
        if self.problem is None and not self.index:
            if self.header is None or not any(self.header):
                raise DataError(self.name, "line 1 must be the header row, but it is blank")
            raise DataError(self.name, "no data rows after the header")
        if self.problem is not None:
            raise self.problem
        if self.cell is not None:
            raise self.cell[1]
        return self.hashes[: self.kept]


def _byte_set(allowed: bytes) -> np.ndarray:
    import numpy as np

    table = np.zeros(256, dtype=bool)
    table[np.frombuffer(allowed, np.uint8)] = True
    return table


def _read_lines(path: Path, records: _Records) -> None:
    """A file of one record per line: cut into chunks at line ends, each parsed by pyarrow (csv.reader when that
    is not plainly right). No quoting, no lone CR and no overlong line: csv.reader cannot fail on it."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with path.open("rb") as f:
        data = f.read(_BLOCK).removeprefix(_UTF8_BOM)
        eof = False
        while b"\n" not in data and not eof:  # the header line
            more = f.read(_BLOCK)
            eof = not more
            data += more
        end = data.find(b"\n")
        line, data = (data, b"") if end < 0 else (data[:end], data[end + 1 :])
        line = line.removesuffix(b"\r").decode("utf-8")
        records.first(line.split(",") if line else [])
        if records.problem is not None:
            raise records.problem
        header = records.header or []
        # One block a chunk, parsed on this thread: Arrow's pool gains little on one block, and a chunk whose parse
        # fails (then read again by csv.reader) leaves no task in it when the process exits with the error.
        read, parse = (
            pacsv.ReadOptions(column_names=header, block_size=1 << 22, use_threads=False),
            pacsv.ParseOptions(ignore_empty_lines=False),
        )
        strings = pacsv.ConvertOptions(
            column_types=dict.fromkeys(header, pa.string()), strings_can_be_null=False, quoted_strings_can_be_null=False
        )
        options: list[tuple[tuple[Any, ...], bytes | None]] = [((read, parse, strings), None)]
        if all(c.dtype == "int" for c in records.schema.features):
            # Over the bytes of integers alone, pyarrow's float parser takes exactly the tokens the int check takes
            # ([+-]?digits), to the value float() gives: such a chunk is parsed straight to numbers.
            types = {**dict.fromkeys(header, pa.float64()), records.schema.label: pa.string()}
            numbers = pacsv.ConvertOptions(column_types=types, null_values=[""], strings_can_be_null=False)
            options.insert(0, ((read, parse, numbers), _INT_BYTES + b",\r\n"))
        while True:
            more = b"" if eof else f.read(_BLOCK)
            eof = not more
            data += more
            if eof:
                chunk, data = data.rstrip(b"\r\n"), b""  # trailing blank lines are tolerated
            else:
                cut = data.rfind(b"\n") + 1
                while cut > 0 and data.endswith((b"\n\n", b"\n\r\n"), 0, cut):  # blank lines go with what follows
                    cut -= 1 if data[cut - 2] == 10 else 2
                chunk, data = data[:cut], data[cut:]
            if chunk:
                _lines(chunk, records, options, final=eof)
            if records.problem is not None:
                raise records.problem
            if eof:
                return


def _lines(
    chunk: bytes, records: _Records, options: list[tuple[tuple[Any, ...], bytes | None]], *, final: bool
) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    n = chunk.count(b"\n") + (not chunk.endswith(b"\n"))
    if not records.index and chunk.strip(b"\r\n"):
        records.data_starts()
        if records.problem is not None:
            return
    for read, only in options if records.index else []:  # numbers straight away where they may be, else strings
        if only is not None and chunk.translate(None, only):
            continue
        try:
            table = pacsv.read_csv(pa.BufferReader(chunk), *read)
        except pa.ArrowInvalid:
            continue
        if records.table(table, n):
            return
    rows = list(csv.reader(io.StringIO(chunk.decode("utf-8"), newline=""), strict=True))
    records.feed(rows, final=final)


def _read_csv(path: Path, records: _Records) -> None:
    """Any other file: csv.reader over the text, in batches of records."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, strict=True)
        parsed, line = 0, 0  # records parsed; the file line the last complete one ended on
        batch: list[list[str]] = []
        try:
            for row in reader:
                parsed, line = parsed + 1, reader.line_num
                if parsed == 1:
                    records.first(row)
                    continue
                batch.append(row)
                if len(batch) > _BATCH:  # one record held back: the last batch fed is never empty
                    records.feed(batch[:-1], final=False)
                    batch = batch[-1:]
        except csv.Error as exc:
            where = f"row {parsed}" if parsed else "the header"
            raise DataError(
                records.name,
                f"garbled CSV in the record that starts at file line {line + 1} ({where}): {exc}"
                + ("; look for an unbalanced quote" if "field limit" in str(exc) else ""),
            ) from None
        records.feed(batch, final=True)


def _fold(h: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Fold one column of float64 values (their bytes: -0.0 and NaNs as written) into running row hashes."""
    import numpy as np

    h = (h ^ values.view(np.uint64)) * np.uint64(0xFF51AFD7ED558CCD)
    return h ^ (h >> np.uint64(29))


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, element-wise (uint64 arithmetic wraps)."""
    import numpy as np

    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


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


def _no_duplicates(
    parts: list[np.ndarray], files: list[tuple[str, int]], rows_at: Callable[[np.ndarray], tuple[Any, Any]]
) -> None:
    """The first row (in file order) equal to an earlier one, features and label, names that earlier one.

    Rows whose 64-bit hash (of the float64 values) another row shares are the candidates: a sorted copy of the
    hashes finds them. `rows_at` gives their float32 features and labels (from memory, or read again), and equal
    ones confirm a duplicate. Only the first candidate rows are looked at, one by one, until one is confirmed.
    """
    import numpy as np

    hashes = np.concatenate(parts) if len(parts) > 1 else parts[0]
    ordered = np.sort(hashes)
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    del ordered
    if not len(repeated):
        return
    found = []
    step = 1 << 20
    for start in range(0, len(hashes), step):  # a block at a time: the search's positions take 8 bytes a row
        h = hashes[start : start + step]
        place = np.minimum(np.searchsorted(repeated, h), len(repeated) - 1)
        found.append(np.flatnonzero(repeated[place] == h) + start)
    where = np.concatenate(found)  # the candidates' global positions, in file order
    x, y = rows_at(where)
    hashes = hashes[where]
    order = np.argsort(hashes, kind="stable")  # equal hashes: a run, in file order
    ordered = hashes[order]
    repeats = np.flatnonzero(ordered[1:] == ordered[:-1]) + 1  # places whose hash the previous place shares
    run_start = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    starts = run_start[np.searchsorted(run_start, repeats, side="right") - 1]
    bits = x.view(np.uint32)
    for at in np.argsort(order[repeats], kind="stable"):  # candidates in file order
        i, place = int(order[repeats[at]]), int(repeats[at])
        for k in order[starts[at] : place].tolist():  # earlier rows with the same hash, in file order
            if y[k] == y[i] and np.array_equal(bits[k], bits[i]):
                first_file, first_row = _where(int(where[k]), files)
                file, row = _where(int(where[i]), files)
                at_ = f"row {first_row}" + ("" if first_file == file else f" of {first_file}")
                raise DataError(
                    file,
                    f"duplicate of {at_} (same features and label); "
                    "set options.allow_duplicate_rows = true in the schema to allow it",
                    row=row,
                )


def _where(i: int, files: list[tuple[str, int]]) -> tuple[str, int]:
    """Global row index -> (file, 1-based data row in that file)."""
    for name, n in files:
        if i < n:
            return name, i + 1
        i -= n
    raise IndexError(i)
