"""A local SMTP sink for the demo and the local runner: each email becomes a .eml file."""

from __future__ import annotations

import argparse
import email
import email.policy
import signal
import threading
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class _SaveToDirectory:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.count += 1
            name = f"{time.strftime('%Y%m%dT%H%M%S')}-{self.count:04d}.eml"
        (self.directory / name).write_bytes(envelope.content)
        print(f"mail: {message['Subject']} -> {', '.join(envelope.rcpt_tos)} ({self.directory / name})", flush=True)
        return "250 Message accepted for delivery"


class MailSink:
    def __init__(self, directory: Path, host: str = "127.0.0.1", port: int = 1025) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.handler = _SaveToDirectory(directory)
        self.controller = Controller(self.handler, hostname=host, port=port)

    def start(self) -> MailSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m infra.mail_sink")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1025)
    parser.add_argument("--dir", type=Path, default=Path("var/mail"))
    args = parser.parse_args()
    sink = MailSink(args.dir, args.host, args.port).start()
    print(f"SMTP sink on {args.host}:{args.port}, saving to {args.dir}", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    sink.stop()


if __name__ == "__main__":
    main()
