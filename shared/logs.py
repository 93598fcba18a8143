"""structlog set-up: key-value events, JSON in production, readable console for humans."""

from __future__ import annotations

import logging
import sys

import structlog

# The levels a command line offers; "off" (kuma-dp's) logs nothing.
LEVELS = ("debug", "info", "warning", "error", "off")
_OFF = logging.CRITICAL + 10


def configure(fmt: str = "json", level: str = "info") -> None:
    numeric = _OFF if level.lower() == "off" else logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries that log through the stdlib (aiohttp, grpc) end up in the same stream.
    logging.basicConfig(
        level=max(numeric, logging.WARNING), stream=sys.stderr, format="%(levelname)s %(name)s %(message)s"
    )
