"""The demo: the whole pipeline on the local broker against the bundled fake GitHub.

It starts the services with the local runner, publishes one report.requested with pika (as any
AMQP client could), waits for the outcome, and prints where the CSV and the email went.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pika

from infra.mail_sink import MailSink
from infra.runner import ROOT, Stack
from tests.fake_github import FakeGitHub


def wait_for_consumers(params: pika.URLParameters, queues: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    connection = pika.BlockingConnection(params)
    try:
        for queue in queues:
            while True:
                channel = connection.channel()
                try:
                    if channel.queue_declare(queue, passive=True).method.consumer_count > 0:
                        channel.close()
                        break
                    channel.close()
                except pika.exceptions.ChannelClosedByBroker:
                    pass  # not declared yet
                if time.monotonic() > deadline:
                    raise SystemExit(f"demo: no consumer on {queue} after {timeout}s")
                time.sleep(0.2)
    finally:
        connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.demo", description=__doc__)
    parser.add_argument("--period", choices=["day", "week", "month"], default="week")
    parser.add_argument("--layout", choices=["rows", "by-language"], default="rows")
    parser.add_argument("--locale", default="en")
    parser.add_argument("--notify", default="you@example.com")
    parser.add_argument("--var", type=Path, default=ROOT / "var" / "demo")
    parser.add_argument("--port", type=int, default=8000, help="the web page's port")
    parser.add_argument(
        "--serve", action="store_true", help="afterwards, keep the stack and its web page running until Ctrl-C"
    )
    args = parser.parse_args()

    amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
    reports_dir, mail_dir, log_dir = args.var / "reports", args.var / "mail", args.var / "logs"
    with FakeGitHub(port=0) as github:
        sink = MailSink(mail_dir, port=_free_port()).start()
        env = {
            "AMQP_URL": amqp_url,
            "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            "GITHUB_API_URL": github.url,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(sink.controller.port),
            "MAIL_FROM": "hotrepos@example.com",
            "ADMINS": "admin@example.com",
            "REPORTS_DIR": str(reports_dir),
            "LOG_DIR": str(log_dir),
            "LOG_LEVEL": "WARNING",
            "GATEWAY_PORT": str(args.port),
            # The demo's page on this machine only, open to whoever sits at it: no tokens to hand out.
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_AUTH": "none",
        }
        log_dir.mkdir(parents=True, exist_ok=True)
        services_log = (args.var / "services.log").open("a")
        stack = Stack(env=env, scale={}, with_gateway=True, out=services_log)
        stack.start()
        try:
            params = pika.URLParameters(amqp_url)
            print("demo: starting fetcher, aggregator, exporter, notifier, webhooks, beat and gateway ...", flush=True)
            wait_for_consumers(
                params,
                [
                    "fetcher.report.requested",
                    "aggregator.report.page.fetched",
                    "exporter.report.aggregated",
                    "notifier.report.exported",
                    "gateway.report.progress",
                ],
                timeout=90,
            )
            connection = pika.BlockingConnection(params)
            channel = connection.channel()
            outcome_queue = channel.queue_declare("", exclusive=True).method.queue
            for key in ("report.exported", "report.failed"):
                channel.queue_bind(outcome_queue, "hotrepos.events", key)
            report_id = f"demo-{uuid.uuid4().hex[:12]}"
            event = {
                "specversion": "1.0",
                "id": str(uuid.uuid4()),
                "type": "report.requested",
                "source": "demo/pika",
                "datacontenttype": "application/json",
                "locale": args.locale,
                "data": {"report_id": report_id, "period": args.period, "layout": args.layout, "notify": args.notify},
            }
            channel.confirm_delivery()
            channel.basic_publish(
                "hotrepos.events",
                "report.requested",
                json.dumps(event).encode(),
                pika.BasicProperties(
                    content_type="application/cloudevents+json", delivery_mode=2, message_id=event["id"]
                ),
            )
            print(f"demo: published report.requested {report_id} ({args.period}, {args.layout})", flush=True)
            outcome = _wait_outcome(channel, outcome_queue, report_id, timeout=120)
            connection.close()
            if outcome["type"] == "report.failed":
                print(f"demo: report failed at {outcome['data']['stage']}: {outcome['data']['reason']}")
                return 1
            data: dict[str, Any] = outcome["data"]
            print(f"demo: CSV written: {data['path']} ({data['rows']} rows, sha256 {data['sha256'][:12]}...)")
            for line in Path(data["path"]).read_text(encoding="utf-8").splitlines()[:4]:
                print(f"      {line[:110]}")
            email_path = _wait_email(mail_dir, report_id, timeout=30)
            print(f"demo: email to {args.notify} saved: {email_path}")
            print(f"demo: service logs: {log_dir}")
            page = f"http://127.0.0.1:{args.port}"
            if args.serve:
                print(f"demo: the page is at {page}: pick a period, click Generate, download. Ctrl-C stops.")
                try:
                    while not stack.exited():
                        time.sleep(0.5)
                except KeyboardInterrupt:
                    pass
            else:
                print(f"demo: to click Generate yourself on the web page ({page}): ./scripts/demo.sh --serve")
            return 0
        finally:
            stack.stop()
            sink.stop()
            services_log.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_outcome(channel: Any, queue: str, report_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            channel.connection.sleep(0.1)
            continue
        event: dict[str, Any] = json.loads(body)
        if (event.get("data") or {}).get("report_id") == report_id:
            return event
    raise SystemExit(f"demo: no outcome for {report_id} after {timeout}s")


def _wait_email(mail_dir: Path, report_id: str, timeout: float) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in sorted(mail_dir.glob("*.eml")):
            if report_id in path.read_text(errors="replace"):
                return path
        time.sleep(0.2)
    raise SystemExit(f"demo: no email for {report_id} after {timeout}s")


if __name__ == "__main__":
    sys.exit(main())
