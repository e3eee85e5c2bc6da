"""`python -m mlci data`: check the data files against the schema; one summary line on success."""

from __future__ import annotations

from collections.abc import Sequence

from mlci.commands import config_of, parse, parser
from mlci.data import data_files, file_names, validate
from mlci.filehash import cache_path, file_digests
from mlci.schema import load_schema


def run(argv: Sequence[str]) -> int:
    p = parser(
        "data",
        "Check every file in data.files against data.schema. Errors name the file, the data row "
        "(1-based, header not counted), the column and the value; exit 2.",
    )
    args = parse(p, argv)
    config = config_of(args)
    rows = validate(config)  # keeps no rows: memory stays flat as the files grow
    files = data_files(config)[:-1]
    shas = file_digests(files, cache_path(config), rehash=config.data.rehash)
    digests = ", ".join(
        f"{name} sha256:{(sha or '?')[:12]}" for name, sha in zip(file_names(config), shas, strict=True)
    )
    schema = load_schema(config)
    print(f"data OK: {rows} rows, {len(schema.features)} features + label, {len(schema.classes)} classes ({digests})")
    return 0
