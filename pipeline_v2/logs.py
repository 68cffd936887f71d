"""structlog, configured once: JSON lines to `logs/pipeline.jsonl`, readable console on a TTY."""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import sys
from pathlib import Path

import structlog

from pipeline_v2.redact import redact_event

_SHARED: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    redact_event,  # secrets never reach a log line
]
LOG_FILE = "pipeline.jsonl"
MAX_BYTES = 50 * 1024 * 1024
BACKUPS = 5
_configured: Path | None = None
_write_error: BaseException | None = None


class QuietRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A log file that never prints "--- Logging error ---" (a full disk would spew one per
    event): the first failure is kept for the daemon to report as a health entry."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        """Keep the error; drop the record."""
        global _write_error
        error = sys.exc_info()[1]
        if _write_error is None and error is not None:
            _write_error = error
        if self.stream is not None:  # a half-written buffer would fail again on every flush
            with contextlib.suppress(OSError):
                self.stream.close()
            self.stream = None  # reopened on the next record


    def flush(self) -> None:
        """Flush; a failure is kept like a failed write, never raised (close flushes too)."""
        global _write_error
        try:
            super().flush()
        except OSError as exc:
            if _write_error is None:
                _write_error = exc


def take_write_error() -> BaseException | None:
    """The first error writing the log file since the last call (None if there was none)."""
    global _write_error
    error, _write_error = _write_error, None
    return error


def configure(
    logs_dir: Path | None, console: bool | None = None, level: int = logging.INFO,
    max_bytes: int = MAX_BYTES, backups: int = BACKUPS,
) -> None:
    """Route every structlog event to the JSON file (and the console when stderr is a TTY)."""
    global _configured, _write_error
    root = logging.getLogger("pipeline_v2")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    _write_error = None  # what the old files failed to write is not the new ones' trouble
    root.setLevel(level)
    root.propagate = False
    if logs_dir is not None:
        logs_dir.mkdir(parents=True, exist_ok=True)
        file_handler = QuietRotatingFileHandler(
            logs_dir / LOG_FILE, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        file_handler.setFormatter(_formatter(structlog.processors.JSONRenderer()))
        root.addHandler(file_handler)
    if console if console is not None else sys.stderr.isatty():
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(_formatter(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())))
        root.addHandler(stream)
    if not root.handlers:
        root.addHandler(logging.NullHandler())
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,  # drop debug events before any formatting
            *_SHARED,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    _configured = logs_dir


def _formatter(renderer: structlog.types.Processor) -> logging.Formatter:
    return structlog.stdlib.ProcessorFormatter(
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
        foreign_pre_chain=_SHARED,
    )


def configured_dir() -> Path | None:
    """The logs folder `configure` last set up (None: not configured here)."""
    return _configured


def get_logger(name: str = "pipeline_v2", **bound: object) -> structlog.stdlib.BoundLogger:
    """A logger under the `pipeline_v2` hierarchy, with context bound."""
    return structlog.get_logger(
        name if name.startswith("pipeline_v2") else f"pipeline_v2.{name}", **bound
    )
