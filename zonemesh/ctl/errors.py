"""The expected failures of zmctl: each becomes a message on stderr and an exit code, never a traceback."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from zonemesh.shared.resources.schema import RESOURCE_NAME, NameRule, check_name

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


def name_type(rule: NameRule = RESOURCE_NAME) -> Callable[[str], str]:
    """An argparse ``type=`` for a name on the command line: the control plane's name rule, so a
    name it would refuse is a usage error here, before a URL is built from it."""

    def parse(text: str) -> str:
        errors = check_name(text, "name", rule)
        if errors:
            raise argparse.ArgumentTypeError(f"invalid name {text!r}: {errors[0].reason}")
        return text

    return parse
