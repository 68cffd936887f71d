"""structlog, configured once: JSON lines to `logs/pipeline.jsonl`, readable console on a TTY."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

import structlog

_SHARED: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]
LOG_FILE = "pipeline.jsonl"
MAX_BYTES = 50 * 1024 * 1024
BACKUPS = 5
_configured: Path | None = None


def configure(
    logs_dir: Path | None, console: bool | None = None, level: int = logging.INFO
) -> None:
    """Route every structlog event to the JSON file (and the console when stderr is a TTY)."""
    global _configured
    root = logging.getLogger("pipeline_v2")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    root.propagate = False
    if logs_dir is not None:
        logs_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            logs_dir / LOG_FILE, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8"
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


def get_logger(name: str = "pipeline_v2", **bound: object) -> structlog.stdlib.BoundLogger:
    """A logger under the `pipeline_v2` hierarchy, with context bound."""
    return structlog.get_logger(
        name if name.startswith("pipeline_v2") else f"pipeline_v2.{name}", **bound
    )
