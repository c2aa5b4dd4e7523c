"""A real SMTP server (aiosmtpd) that keeps what it receives, and can go down on demand."""

from __future__ import annotations

import email
import email.policy
import socket
import threading
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from tests.support.waiting import eventually


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Collector:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self.sink.lock:
            self.sink.messages.append(message)
            self.sink.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


class SmtpSink:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.lock = threading.Lock()
        self._controller: Controller | None = None

    def start(self) -> SmtpSink:
        self._controller = Controller(_Collector(self), hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [m for m in self.messages if address in str(m["To"])]

    def wait_for(
        self, predicate: Callable[[EmailMessage], bool], timeout: float = 60, count: int = 1
    ) -> list[EmailMessage]:
        """The emails received that match, once there are at least `count` of them."""

        def matching() -> list[EmailMessage]:
            with self.lock:
                found = [m for m in self.messages if predicate(m)]
            return found if len(found) >= count else []

        def received() -> str:
            with self.lock:
                subjects = [str(m["Subject"]) for m in self.messages]
            return f"{count} matching email(s); received subjects: {subjects}"

        return eventually(matching, timeout=timeout, message=received)
