"""The few exception types the CLI maps to exit codes; everything else is a bug and may trace."""

from __future__ import annotations

from dataclasses import dataclass

# Exit codes an orchestrator can act on: 2 = the input is wrong, do not retry;
# 3 = the infrastructure failed (network, storage), retrying may succeed.
EXIT_USER_ERROR = 2
EXIT_INFRA_ERROR = 3
# 4 = damaged stored objects were found (`runner verify`, `runner score`, `analysis report`): repair, then rerun.
EXIT_DAMAGED = 4


@dataclass(frozen=True)
class Problem:
    """One user-facing problem, located in a file where possible."""

    message: str
    file: str | None = None
    line: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.message}"


class UserError(Exception):
    """A mistake in what the user gave us (manifest, data, arguments); exit 2, never retried."""

    exit_code = EXIT_USER_ERROR

    def __init__(self, problems: list[Problem] | str):
        if isinstance(problems, str):
            problems = [Problem(problems)]
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ManifestError(UserError):
    """The manifest is invalid."""


class DataError(UserError):
    """A data file is missing or malformed."""


class InfraError(Exception):
    """Something outside the user's input failed (network, storage); exit 3, worth retrying."""

    exit_code = EXIT_INFRA_ERROR


class StorageError(InfraError):
    """The artifact store could not be read or written."""
