"""structlog JSON lines on stdout, per-handler log files under LOG_DIR, and ERRORs as alerts."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog

_log_name: contextvars.ContextVar[str | None] = contextvars.ContextVar("hotrepos_log_name", default=None)


@contextlib.contextmanager
def log_file_scope(name: str) -> Iterator[None]:
    """Lines logged inside go to LOG_DIR/<name>.log as well (one file per task or handler)."""
    token = _log_name.set(name)
    try:
        yield
    finally:
        _log_name.reset(token)


class PerTaskFileHandler(logging.Handler):
    """Writes each record to the file of the task or handler that logged it."""

    def __init__(self, directory: Path, default_name: str) -> None:
        super().__init__()
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.default_name = default_name
        self._files: dict[str, logging.FileHandler] = {}
        self._files_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        name = _log_name.get() or self.default_name
        with self._files_lock:
            handler = self._files.get(name)
            if handler is None:
                handler = logging.FileHandler(self.directory / f"{name}.log", encoding="utf-8")
                handler.setFormatter(self.formatter)
                self._files[name] = handler
        handler.emit(record)

    def close(self) -> None:
        with self._files_lock:
            for handler in self._files.values():
                handler.close()
            self._files.clear()
        super().close()


def configure_logging(
    service: str,
    level: str = "INFO",
    log_dir: Path | None = None,
    extra_handlers: list[logging.Handler] | None = None,
) -> None:
    """Route structlog and the stdlib (celery, kombu) through one JSON renderer."""

    def add_service(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        event_dict.setdefault("service", service)
        return event_dict

    shared_processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_service,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared_processors,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    json_formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared_processors,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Without frame locals: they would carry emails and payloads into logs and alert emails.
            structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False)),
            structlog.processors.JSONRenderer(),
        ],
    )
    stdout = logging.StreamHandler(sys.stdout)
    stdout.setFormatter(json_formatter)
    handlers: list[logging.Handler] = [stdout]
    if log_dir is not None:
        per_task = PerTaskFileHandler(log_dir, service)
        per_task.setFormatter(json_formatter)
        handlers.append(per_task)
    handlers.extend(extra_handlers or [])

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    # kombu and amqp explain reconnects at INFO; the wrapper already logs what matters.
    for noisy in ("amqp", "kombu", "celery.worker.strategy", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))

    def log_unhandled(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            return
        logging.getLogger(f"hotrepos.{service}").critical("unhandled exception", exc_info=(exc_type, exc, tb))

    def log_unhandled_in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            log_unhandled(args.exc_type, args.exc_value, args.exc_traceback)

    sys.excepthook = log_unhandled
    threading.excepthook = log_unhandled_in_thread
