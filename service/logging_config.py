"""structlog set up once per process: JSON lines for machines, console rendering for people.
What the libraries log through the standard library (aiohttp's server, asyncio) comes out the
same way, warnings and up."""

import logging
import sys

import structlog
from aiohttp.http_exceptions import HttpProcessingError


def configure_logging(level: str = "info", log_format: str = "auto") -> None:
    if log_format == "auto":
        log_format = "console" if sys.stderr.isatty() else "json"
    renderer = (
        structlog.dev.ConsoleRenderer() if log_format == "console" else structlog.processors.JSONRenderer()
    )
    threshold = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.contextvars.merge_contextvars, structlog.stdlib.add_log_level,
                           structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder(),
                           structlog.processors.TimeStamper(fmt="iso", utc=True)],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer]))
    handler.addFilter(without_request_bytes)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.WARNING, threshold))
    logging.captureWarnings(True)  # a library's warnings.warn, too


def without_request_bytes(record: logging.LogRecord) -> bool:
    """aiohttp's server logs a request it cannot parse with the parser's error, which quotes the
    request's raw bytes (an oversized Authorization header: the token). Keep which error it was."""
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, HttpProcessingError):
        # The client's mistake, not ours: a warning (aiohttp says error), kept only where
        # warnings are.
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg, record.args = "http.unparsable_request", ()
        record.error, record.status = type(error).__name__, error.code
        record.exc_info = record.exc_text = None
        return logging.WARNING >= logging.getLogger().level
    return True
