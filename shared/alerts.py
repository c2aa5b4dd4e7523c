"""The admin-email handler of old: ERROR records become alerts on hotrepos.alerts, throttled.

Alerts raised while the broker is unreachable wait in a bounded spool and go out when it is back,
in order; past the bound the oldest are dropped, counted in hotrepos_alerts_dropped_total, and the
first alert after the outage says how many.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
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

SPOOL_LIMIT = 1000
RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 10.0


class AlertHandler(logging.Handler):
    """Publishes ERROR and worse as alerts; identical errors give one alert per interval."""

    def __init__(
        self,
        service: str,
        publisher_factory: Callable[[], Publisher],
        *,
        interval_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        spool_limit: int = SPOOL_LIMIT,
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
        self._spool: collections.deque[AlertRaised] = collections.deque()
        self._spool_limit = spool_limit
        self._dropped = 0  # since the last alert that went out
        self._sending = 0  # taken from the spool, not yet published
        self._ready = threading.Condition()
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
        self._spool_alert(alert.model_copy(update={"suppressed": suppressed}))

    def _spool_alert(self, alert: AlertRaised) -> None:
        with self._ready:
            if len(self._spool) >= self._spool_limit:
                dropped = self._spool.popleft()  # the oldest: the newest say more about now
                self._dropped += 1
                metrics.ALERTS_DROPPED.inc()
                print(f"hotrepos: alert spool full, dropped: {dropped.message}", file=sys.stderr)
            self._spool.append(alert)
            self._ready.notify()

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
        delay = RETRY_FIRST_SECONDS
        while True:
            with self._ready:
                while not self._spool:
                    self._ready.wait()
                alert, dropped = self._spool.popleft(), self._dropped
                self._dropped, self._sending = 0, 1
            try:
                self._publish(alert, dropped)
            except Exception as exc:
                # Kept, first in line, and tried again: the broker is away, and the admins need this
                # alert most now.
                print(f"hotrepos: could not publish an alert, retrying in {delay:g}s: {exc}", file=sys.stderr)
                self._drop_publisher()
                with self._ready:
                    self._spool.appendleft(alert)
                    self._dropped += dropped
                    self._sending = 0
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            delay = RETRY_FIRST_SECONDS
            with self._ready:
                self._sending = 0

    def _drop_publisher(self) -> None:
        """A new connection next time: this one's broker went away."""
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            with contextlib.suppress(Exception):
                publisher.close()

    def _publish(self, alert: AlertRaised, dropped: int) -> None:
        if dropped:
            note = f" [{dropped} earlier alerts were dropped while the broker was unreachable]"
            alert = alert.model_copy(update={"message": (alert.message + note)[-4000:]})
        _publishing.active = True
        try:
            if self._publisher is None:
                self._publisher = self._publisher_factory()
            self._publisher.publish(alert, correlationid=alert.report_id)
        finally:
            _publishing.active = False

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until spooled alerts are published (used at shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._ready:
                if not self._spool and not self._sending:
                    return
            time.sleep(0.02)
