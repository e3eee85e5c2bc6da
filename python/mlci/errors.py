"""Typed errors. Library code raises these; only cli.py prints them and exits.

Exit codes everywhere: 0 pass, 1 a gate failed, 2 usage/config/data error.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_USAGE = 2


class MlciError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""

    exit_code = EXIT_USAGE


class UsageError(MlciError):
    """Bad command line."""


class ConfigError(MlciError):
    """mlci.toml (or an override) has an unknown key, a wrong type or a bad value."""

    def __init__(self, file: str, key: str, value: object, why: str) -> None:
        self.file, self.key, self.value, self.why = file, key, value, why
        super().__init__(f"{file}: {key} = {value!r}: {why}")


class DataError(MlciError):
    """A data file breaks its schema. Names file, column, row and value where known."""

    def __init__(
        self,
        file: str,
        why: str,
        *,
        row: int | None = None,
        column: str | None = None,
        value: object = None,
    ) -> None:
        self.file, self.why, self.row, self.column, self.value = file, why, row, column, value
        where = file
        if row is not None:
            where += f": row {row}"
        if column is not None:
            where += f": column {column!r}"
        if value is not None:
            where += f": value {value!r}"
        super().__init__(f"{where}: {why}")


class ArtifactError(MlciError):
    """A model artifact is missing, corrupt (sha256 mismatch) or fails its smoke test."""


class RegistryError(MlciError):
    """The registry is missing something asked for (a run, a champion) or is unusable."""


class SandboxError(MlciError):
    """The sandbox cannot be built or reached (for example: no Docker engine)."""


class GateFailed(MlciError):
    """A quality, SLO or deploy gate failed: exit 1."""

    exit_code = EXIT_GATE_FAILED


class WheelhouseError(MlciError):
    """The model server's offline wheelhouse cannot be built (a wheel will not download or build)."""
