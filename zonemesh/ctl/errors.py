"""The expected failures of zmctl: each becomes a message on stderr and an exit code, never a traceback."""

from __future__ import annotations

from collections.abc import Sequence

EXIT_ERROR = 1  # the control plane refused, a document is invalid, the CP cannot be reached
EXIT_USAGE = 2  # the command line itself is wrong (same code argparse uses)


class CtlError(Exception):
    """A failure to report to the user: a one-line message plus optional detail lines."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, details: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)

    def render(self) -> str:
        return "\n".join([self.message, *(f"  {line}" for line in self.details)])


class UsageError(CtlError):
    exit_code = EXIT_USAGE
