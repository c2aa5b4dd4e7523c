"""The local runner's stack, scaled as in compose (3 fetchers, 2 aggregators), each service logged in
as its own least-privilege broker user: every report still comes out exactly once."""

from __future__ import annotations

import io
import uuid
from collections import Counter
from pathlib import Path

import pytest

from infra.runner import Stack
from tests.conftest import TODAY
from tests.fake_github import FakeGitHub
from tests.support.amqp import EventListener, cloud_event, publish
from tests.support.broker import Broker
from tests.support.broker_users import service_users
from tests.support.smtp import SmtpSink
from tests.support.waiting import eventually

SCALE = {"fetcher": 3, "aggregator": 2}
REQUESTS = [
    ("day", "rows"),
    ("week", "rows"),
    ("month", "rows"),
    ("day", "by-language"),
    ("week", "by-language"),
    ("month", "by-language"),
]


def test_scaled_stack_makes_each_report_once(
    broker: Broker,
    vhost: str,
    redis_url: str,
    fake_github: FakeGitHub,
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    reports_dir = tmp_path / "reports"
    output = io.StringIO()
    with service_users(broker, vhost) as users:
        stack = Stack(
            env={
                "REDIS_URL": redis_url,
                "GITHUB_API_URL": fake_github.url,
                "GITHUB_TOKEN": "test-token",
                "SMTP_HOST": "127.0.0.1",
                "SMTP_PORT": str(smtp_sink.port),
                "MAIL_FROM": "hotrepos@example.com",
                "ADMINS": "admin@example.com",
                "REPORTS_DIR": str(reports_dir),
                "LOG_LEVEL": "INFO",
                "TODAY": TODAY.isoformat(),
                "FETCH_RETRY_BASE_SECONDS": "0.05",
                "METRICS_PORT": "",
            },
            scale=SCALE,
            out=output,
            service_env={
                service: {"AMQP_URL": users.amqp_url(service)}
                for service in ("fetcher", "fetcher-beat", "aggregator", "exporter", "notifier")
            },
        )
        listener = EventListener(broker.amqp_url(vhost), "report.#")
        stack.start()
        try:

            def consumers_on(queue: str, count: int) -> bool:
                assert not stack.exited(), output.getvalue()[-6000:]
                try:
                    return int(broker.queue(vhost, queue).get("consumers", 0)) >= count
                except Exception:
                    return False

            # Every replica competes on its service's one queue: 3 and 2 consumers, not 1.
            for queue, count in (
                ("fetcher.report.requested", 3),
                ("aggregator.report.page.fetched", 2),
                ("exporter.report.aggregated", 1),
                ("notifier.report.exported", 1),
            ):
                eventually(
                    lambda q=queue, c=count: consumers_on(q, c), timeout=90, message=f"{count} consumers on {queue}"
                )

            tag = uuid.uuid4().hex[:8]
            reports = {}
            for index, (period, layout) in enumerate(REQUESTS):
                report_id = f"scaled-{tag}-{index}"
                notify = f"requester-{index}-{tag}@example.com"
                reports[report_id] = notify
                data = {"report_id": report_id, "period": period, "layout": layout, "notify": notify}
                publish(broker.amqp_url(vhost), "report.requested", cloud_event("report.requested", data))

            for report_id in reports:
                outcome = listener.wait_for_outcome(report_id, timeout=120)
                assert outcome["type"] == "report.exported", outcome
            for notify in reports.values():
                smtp_sink.wait_for(lambda m, to=notify: to in str(m["To"]), timeout=60)

            exported = Counter(e["data"]["report_id"] for e in listener.of("report.exported"))
            assert exported == Counter(dict.fromkeys(reports, 1))
            assert listener.of("report.failed") == []
            pages = Counter((e["data"]["report_id"], e["data"]["page"]) for e in listener.of("report.page.fetched"))
            assert set(pages) == {(report_id, page) for report_id in reports for page in range(1, 6)}
            for report_id, notify in reports.items():
                assert len(list(reports_dir.glob(f"*-{report_id}.csv"))) == 1
                emails = smtp_sink.to(notify)
                assert len(emails) == 1, [str(m["Subject"]) for m in emails]
                assert report_id in emails[0].get_body(preferencelist=("plain",)).get_content()
            assert len(list(reports_dir.glob("*.csv"))) == len(reports)
            assert not stack.exited(), output.getvalue()[-6000:]
            # Least privilege cost nothing: no service, beat included, was refused anything.
            assert "ACCESS_REFUSED" not in output.getvalue()
        except BaseException:
            print(output.getvalue()[-20000:])
            raise
        finally:
            listener.close()
            stack.stop()


pytestmark = pytest.mark.timeout(300)
