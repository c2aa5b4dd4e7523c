"""The admin-email handler of old: ERROR records become alerts on hotrepos.alerts, throttled."""

from __future__ import annotations

import hashlib
import logging
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from shared import metrics
from shared.events import AlertRaised
from shared.publisher import Publisher

_publishing = threading.local()


class AlertHandler(logging.Handler):
    """Publishes ERROR and worse as alerts; identical errors give one alert per interval."""

    def __init__(
        self,
        service: str,
        publisher_factory: Callable[[], Publisher],
        *,
        interval_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(level=logging.ERROR)
        self.service = service
        self.interval_seconds = interval_seconds
        self._publisher_factory = publisher_factory
        self._publisher: Publisher | None = None
        self._clock = clock
        self._last_sent: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()
        self._outbox: queue.Queue[AlertRaised | None] = queue.Queue(maxsize=1000)
        self._sender = threading.Thread(target=self._send_forever, name="alert-sender", daemon=True)
        self._sender.start()

    def emit(self, record: logging.LogRecord) -> None:
        metrics.ERRORS_LOGGED.labels(level=record.levelname).inc()
        if getattr(_publishing, "active", False):
            return  # an error while publishing an alert must not alert about itself forever
        try:
            alert = self._to_alert(record)
        except Exception:
            self.handleError(record)
            return
        with self._lock:
            now = self._clock()
            last = self._last_sent.get(alert.fingerprint)
            if last is not None and now - last < self.interval_seconds:
                self._suppressed[alert.fingerprint] = self._suppressed.get(alert.fingerprint, 0) + 1
                return
            self._last_sent[alert.fingerprint] = now
            suppressed = self._suppressed.pop(alert.fingerprint, 0)
        alert = alert.model_copy(update={"suppressed": suppressed})
        try:
            self._outbox.put_nowait(alert)
        except queue.Full:
            print(f"hotrepos: alert outbox full, dropped: {alert.message}", file=sys.stderr)

    def _to_alert(self, record: logging.LogRecord) -> AlertRaised:
        event: dict[str, Any] = record.msg if isinstance(record.msg, dict) else {}
        message = str(event.get("event", "")) if event else record.getMessage()
        details = {
            k: v for k, v in event.items() if k not in ("event", "exc_info", "timestamp", "level", "logger", "service")
        }
        if details:
            message += " " + " ".join(f"{k}={v}" for k, v in sorted(details.items()))
        exc_text = None
        exc_info = record.exc_info
        if event.get("exc_info") is True:
            exc_info = sys.exc_info()
        if exc_info and exc_info[0] is not None:
            exc_text = "".join(traceback.format_exception(*exc_info))
        where = f"{record.pathname}:{record.lineno}"
        exc_name = exc_info[0].__name__ if exc_info and exc_info[0] is not None else ""
        # The fingerprint ignores ids and reasons, so a storm of one error counts as one.
        fingerprint = hashlib.sha256(
            f"{self.service}|{record.name}|{event.get('event', record.msg)}|{exc_name}|{where}".encode()
        ).hexdigest()[:32]
        report_id = event.get("report_id")
        return AlertRaised(
            service=self.service,
            level=record.levelname,
            logger=record.name[:200],
            message=message[:4000],
            exception=exc_text[-20000:] if exc_text else None,
            fingerprint=fingerprint,
            report_id=report_id if isinstance(report_id, str) and len(report_id) <= 64 else None,
        )

    def _send_forever(self) -> None:
        while True:
            alert = self._outbox.get()
            if alert is None:
                return
            _publishing.active = True
            try:
                if self._publisher is None:
                    self._publisher = self._publisher_factory()
                self._publisher.publish(alert, correlationid=alert.report_id)
            except Exception as exc:
                print(f"hotrepos: could not publish alert: {exc}: {alert.message}", file=sys.stderr)
            finally:
                _publishing.active = False
                self._outbox.task_done()

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until queued alerts are published (used at shutdown)."""
        deadline = time.monotonic() + timeout
        while self._outbox.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
