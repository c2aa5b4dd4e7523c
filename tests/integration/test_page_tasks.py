"""The fetcher's page tasks on a real broker: a nacked send is an outage the request waits out."""

from __future__ import annotations

import datetime as dt

import pika
import pytest

from services.fetcher.handlers import FetchPage
from services.fetcher.topology import TASK_DEAD_LETTER_QUEUE, TASK_EXCHANGE, TASK_QUEUE
from services.fetcher.worker import CeleryPageFetches, create_celery_app
from shared.amqp import connect, declare_when_reachable
from shared.events import ReportSpec
from shared.pipeline import PublishNotTaken
from shared.settings import CommonSettings
from tests.support.amqp import nacking_queue


def fetches(report_id: str) -> list[FetchPage]:
    spec = ReportSpec(period="week", since=dt.date(2026, 11, 29), layout="rows")
    return [FetchPage(report_id=report_id, page=page, pages=2, spec=spec) for page in (1, 2)]


def test_page_tasks_the_broker_nacks_raise_an_outage_then_go_out_once_it_takes_them(amqp_url: str) -> None:
    settings = CommonSettings(amqp_url=amqp_url)
    with connect(settings) as connection:
        declare_when_reachable(connection, (), extra=(TASK_QUEUE, TASK_DEAD_LETTER_QUEUE))
    app = create_celery_app(settings)
    page_fetches = CeleryPageFetches(app)
    try:
        # Before, kombu's OperationalError: a crash of the request's handler, counted toward its
        # delivery limit, after which the broker dead-lettered the request and the report hung.
        with (
            nacking_queue(amqp_url, TASK_EXCHANGE.name, TASK_QUEUE.routing_key),
            pytest.raises(PublishNotTaken, match="did not take the page tasks: MessageNacked"),
        ):
            page_fetches.schedule(fetches("tasks-nacked"))
        page_fetches.schedule(fetches("tasks-taken"))
    finally:
        app.close()
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        bodies = []
        while (got := channel.basic_get(TASK_QUEUE.name, auto_ack=True))[0] is not None:
            bodies.append(got[2])
    finally:
        connection.close()
    # The nacked send reached the task queue, which took it; the report's retry sends both again,
    # under the same derived ids, which the page tasks deduplicate.
    assert sum(b"tasks-taken" in body for body in bodies) == 2
