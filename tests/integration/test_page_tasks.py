"""The fetcher's page tasks on a real broker: a page whose first attempt did not succeed goes on as a
task, a nacked send is an outage the request waits out, and a page given up waits in the dead letters."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from kombu.transport.native_delayed_delivery import bind_queue_to_native_delayed_delivery_exchange

from services.fetcher.handlers import FetchPage
from services.fetcher.topology import TASK_DEAD_LETTER_QUEUE, TASK_QUEUE
from services.fetcher.worker import FETCH_PAGE_TASK, PageTasks, create_celery_app, page_message
from shared.amqp import connect, declare_when_reachable
from shared.context import EventContext
from shared.events import ReportSpec
from shared.pipeline import DeadLetter, PublishNotTaken, Requeue, RetryAfter, Verdict
from shared.settings import CommonSettings
from shared.topology import DELAY
from tests.support.amqp import nacking_queue
from tests.support.waiting import eventually


def unfinished(report_id: str, verdict: Verdict) -> list[tuple[str, Verdict]]:
    spec = ReportSpec(period="week", since=dt.date(2026, 11, 29), layout="rows")
    context = EventContext(report_id, None, None)
    return [
        (page_message(FetchPage(report_id=report_id, page=page, pages=2, spec=spec), context), verdict)
        for page in (1, 2)
    ]


def drain(amqp_url: str, queue: str) -> list[tuple[pika.spec.BasicProperties, bytes]]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        got = []
        while (message := channel.basic_get(queue, auto_ack=True))[0] is not None:
            got.append((message[1], message[2]))
        return got
    finally:
        connection.close()


@pytest.fixture
def page_tasks(amqp_url: str) -> Iterator[PageTasks]:
    settings = CommonSettings(amqp_url=amqp_url)
    with connect(settings) as connection:
        declare_when_reachable(connection, (), extra=(TASK_QUEUE, TASK_DEAD_LETTER_QUEUE))
        # As the worker binds it at its start: a countdown comes back to the task queue through the levels.
        bind_queue_to_native_delayed_delivery_exchange(connection, TASK_QUEUE)
    drain(amqp_url, TASK_QUEUE.name)
    drain(amqp_url, TASK_DEAD_LETTER_QUEUE.name)
    app = create_celery_app(settings)
    try:
        yield PageTasks(app)
    finally:
        app.close()


def tasks_back(amqp_url: str, count: int) -> list[tuple[pika.spec.BasicProperties, bytes]]:
    """The task messages back in the task queue from the broker's delay levels, `count` of them."""
    tasks: list[tuple[pika.spec.BasicProperties, bytes]] = []

    def all_back() -> bool:
        tasks.extend(drain(amqp_url, TASK_QUEUE.name))
        return len(tasks) >= count

    eventually(all_back, timeout=30, message=lambda: f"{count} tasks back, {len(tasks)} so far", interval=0.2)
    assert len(tasks) == count
    return tasks


def kwargs_by_report(tasks: list[tuple[pika.spec.BasicProperties, bytes]]) -> dict[str, Any]:
    kwargs = {}
    for properties, body in tasks:
        assert properties.headers["task"] == FETCH_PAGE_TASK and properties.headers["retries"] == 1
        args, task_kwargs, _ = json.loads(body)
        kwargs[json.loads(args[0])["data"]["report_id"]] = task_kwargs
    return kwargs


def test_page_tasks_the_broker_nacks_raise_an_outage_then_go_out_once_it_takes_them(
    amqp_url: str, page_tasks: PageTasks
) -> None:
    crashed = Requeue("handler crashed")
    # Before, kombu's OperationalError: a crash of the request's handler, counted toward its
    # delivery limit, after which the broker dead-lettered the request and the report hung.
    with (
        nacking_queue(amqp_url, DELAY.name, f"#.{TASK_QUEUE.routing_key}"),
        pytest.raises(PublishNotTaken, match="did not take the page tasks: MessageNacked"),
    ):
        page_tasks.carry_on(unfinished("tasks-nacked", crashed))
    page_tasks.carry_on(unfinished("tasks-taken", crashed))
    # The nacked sends reached the queues that took them, Celery resending a nack as it does; the
    # report's retry sends both pages again, under the same derived ids, which the page tasks deduplicate.
    bodies: list[bytes] = []

    def both_taken() -> bool:
        bodies.extend(body for _, body in drain(amqp_url, TASK_QUEUE.name))
        return sum(b"tasks-taken" in body for body in bodies) >= 2

    eventually(both_taken, timeout=30, message="both pages of the report's retry", interval=0.2)
    assert sum(b"tasks-taken" in body for body in bodies) == 2


def test_a_page_that_must_wait_goes_on_as_a_task_counting_its_wait_as_no_retry(
    amqp_url: str, page_tasks: PageTasks
) -> None:
    # Sent through the broker's delay levels: the task comes back to its queue after a second or so.
    page_tasks.carry_on(unfinished("tasks-waiting", RetryAfter(1.0, retries=0, reason="budget", counted=False)))
    page_tasks.carry_on(unfinished("tasks-retried", RetryAfter(1.0, retries=1, reason="GitHub 502")))
    # The task's pipeline counts Celery's retries less its waits: 0 for the wait, 1 for the retry.
    assert kwargs_by_report(tasks_back(amqp_url, 4)) == {
        "tasks-waiting": {"crashes": 0, "waits": 1},
        "tasks-retried": {"crashes": 0, "waits": 0},
    }


def test_a_page_crashed_or_given_up_at_its_first_attempt_is_tried_once_more_as_a_task(
    amqp_url: str, page_tasks: PageTasks
) -> None:
    page_tasks.carry_on(unfinished("tasks-crashed", Requeue("handler crashed")))
    page_tasks.carry_on(unfinished("tasks-refused", DeadLetter("broker refused publishing", parked=True)))
    # A crash counts toward the task's own delivery limit; a second refusal, the worker's Reject,
    # dead-letters the task through the broker.
    assert kwargs_by_report(tasks_back(amqp_url, 4)) == {
        "tasks-crashed": {"crashes": 1, "waits": 0},
        "tasks-refused": {"crashes": 1, "waits": 0},
    }
    assert drain(amqp_url, TASK_DEAD_LETTER_QUEUE.name) == []
