"""The fetcher's own Celery app: page fetches as tasks for their countdown retries, run through the
shared delivery pipeline, and a consumer step that consumes the fetcher's event queues in the worker."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, cast

import structlog
from celery import Celery, bootsteps, signals
from celery.exceptions import Reject
from kombu.exceptions import LimitExceeded, OperationalError
from kombu.message import Message
from kombu.messaging import Consumer

from services.fetcher.handlers import FETCH_PAGE, FetchPage
from services.fetcher.topology import TASK_EXCHANGE, TASK_QUEUE
from shared.consumer import KombuDelivery, QueueConsumer
from shared.context import EventContext, current_context
from shared.events import derived_event_id
from shared.pipeline import Ack, DeadLetter, DeliveryPipeline, PublishNotTaken, Requeue, RetryAfter, Verdict
from shared.publisher import CONFIRM_TIMEOUT_SECONDS, build_event, encode_event, not_taken
from shared.settings import CommonSettings
from shared.topology import whole_delay

log = structlog.get_logger("hotrepos.fetcher")

FETCH_PAGE_TASK = "hotrepos.fetcher.fetch_page"
EVENT_PREFETCH = 16
# A crashed fetch comes back this soon: a bug will not heal by waiting, a flaky dependency might.
CRASH_RETRY_SECONDS = 1.0


@signals.setup_logging.connect
def _keep_our_logging(**_: Any) -> None:
    """Connected so that Celery leaves the logging set up by shared.logging alone."""


def create_celery_app(settings: CommonSettings) -> Celery:
    app = Celery("hotrepos-fetcher", broker=settings.amqp_url, set_as_current=False)
    app.conf.update(
        task_queues=[TASK_QUEUE],
        task_default_queue=TASK_QUEUE.name,
        task_default_exchange=TASK_EXCHANGE.name,
        task_default_routing_key=TASK_QUEUE.routing_key,
        task_create_missing_queues=False,
        # Named explicitly: left to itself Celery publishes to the default exchange, which a
        # least-privilege broker user may not write to (it reaches every queue by name).
        # The exchange's type too: a retry's countdown goes through the broker's delay levels only when
        # Celery knows it is not a direct exchange.
        task_routes={
            FETCH_PAGE_TASK: {
                "exchange": TASK_EXCHANGE.name,
                "exchange_type": TASK_EXCHANGE.type,
                "routing_key": TASK_QUEUE.routing_key,
            }
        },
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=4,
        # Celery's prefetch restore after a reconnection sends basic.qos from every pool thread on one
        # connection; py-amqp is not thread-safe, the replies get lost, and the worker stalls until the
        # broker drops it for missed heartbeats.
        worker_enable_prefetch_count_reduction=False,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        # A quorum queue has no global QoS: Celery must know, and sends countdowns through the broker's
        # delay levels (quorum too) instead of holding them in the worker.
        worker_detect_quorum_queues=True,
        broker_native_delayed_delivery_queue_type="quorum",
        # A page still running when the connection drops is redelivered: stop it rather than run it twice.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_connection_retry_on_startup=True,
        broker_heartbeat=30,
        broker_transport_options={"confirm_publish": True},
        broker_use_ssl=_celery_ssl(settings),
        enable_utc=True,
        timezone="UTC",
    )
    return app


def _celery_ssl(settings: CommonSettings) -> dict[str, Any] | bool:
    if not settings.amqp_url.startswith("amqps://"):
        return False
    options: dict[str, Any] = {"cert_reqs": ssl.CERT_REQUIRED}
    if settings.amqp_ca_file:
        options["ca_certs"] = str(settings.amqp_ca_file)
    if settings.amqp_cert_file:
        options["certfile"] = str(settings.amqp_cert_file)
    if settings.amqp_key_file:
        options["keyfile"] = str(settings.amqp_key_file)
    return options


class PagesFetchedHere:
    """A report's pages, first tried all at once in this process's own threads; a page that did not
    succeed goes on as a Celery task, for its retries.

    Each first attempt runs through the page tasks' own pipeline, under the same derived ids, so that
    dedup, cancellation, budget and failure behave as they do for a task. The request that scheduled
    them is settled only once every page is done or handed to Celery: a crash before then hands the
    request out again, and the pages published twice are deduplicated by their ids.
    """

    def __init__(self, pipeline: DeliveryPipeline, tasks: PageTasks, threads: int) -> None:
        self._pipeline = pipeline
        self._tasks = tasks
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="page")

    def schedule(self, fetches: list[FetchPage]) -> None:
        # Built in the request's scope: each fetch carries its correlation id, locale and trace along.
        context = current_context()
        messages = [page_message(fetch, context) for fetch in fetches]
        verdicts = zip(messages, self._threads.map(self._first_attempt, messages), strict=True)
        self._tasks.carry_on([(message, verdict) for message, verdict in verdicts if not isinstance(verdict, Ack)])

    def _first_attempt(self, message: str) -> Verdict:
        try:
            return self._pipeline.process(TaskDelivery(message, retries=0, crashes=0))
        except Exception as exc:
            # The pipeline settles every handler error itself; this is a fault of its own, tried again.
            log.exception("page.first_attempt_crashed")
            return Requeue(f"first attempt crashed: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


def page_message(fetch: FetchPage, context: EventContext) -> str:
    """A page fetch as the CloudEvent a page task carries, under an id derived from its report and page."""
    event = build_event(
        fetch,
        source="hotrepos/fetcher",
        event_id=derived_event_id(fetch.report_id, "fetch", str(fetch.page)),
        context=context,
        event_type=FETCH_PAGE,
    )
    return encode_event(event).decode()


class PageTasks:
    """Pages whose first attempt did not succeed, sent on as Celery tasks that carry on from its verdict."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def carry_on(self, pages: list[tuple[str, Verdict]]) -> None:
        if not pages:
            return
        try:
            with self.app.producer_or_acquire() as producer:
                for message, verdict in pages:
                    self._send(producer, message, verdict)
        except (OperationalError, LimitExceeded) as exc:
            # As the shared publisher says it: an outage to wait out, so the request is retried later
            # through the delay levels, not counted as a crash toward its delivery limit.
            raise not_taken(exc, "the page tasks") from exc

    def _send(self, producer: Any, message: str, verdict: Verdict) -> None:
        options: dict[str, Any] = {
            "args": [message],
            "producer": producer,
            "retry": True,
            # The first attempt is the task's first run: this send is its first retry, as Celery counts.
            "retries": 1,
            # A request thread waits on this: a confirm that never comes must not hold it for ever.
            "confirm_timeout": CONFIRM_TIMEOUT_SECONDS,
        }
        if isinstance(verdict, RetryAfter):
            # What the pipeline did not count is a wait, as a task's own retry says it.
            waits = 1 - verdict.retries
            options.update(countdown=whole_delay(verdict.delay), kwargs={"crashes": 0, "waits": waits})
        else:
            # A crash, or a page given up (its publish refused): tried once more as a task, which a
            # second refusal rejects into fetcher.tasks.dlq through the broker's own dead-lettering,
            # replayable as any task there. The fetcher may not write into the dead letters itself.
            options.update(countdown=CRASH_RETRY_SECONDS, kwargs={"crashes": 1, "waits": 0})
        self.app.send_task(FETCH_PAGE_TASK, **options)


class TaskDelivery:
    """A page task as the pipeline reads it: Celery counts every retry, the task its crashes and the
    waits (for budget) that do not count as retries."""

    content_type = "application/cloudevents+json"
    message_id = None

    def __init__(self, message: str, retries: int, crashes: int, waits: int = 0) -> None:
        self.body = message.encode()
        self.retries = retries - waits
        self.deliveries = crashes + 1


def register_fetch_page_task(app: Celery, pipeline: DeliveryPipeline) -> None:
    """The task runs its message through the pipeline and carries the verdict out the Celery way."""

    def retry_later(task: Any, delay: float, **options: Any) -> None:
        try:
            # Whole seconds: Celery refuses a countdown the delay levels would round down to nothing.
            task.retry(countdown=whole_delay(delay), confirm_timeout=CONFIRM_TIMEOUT_SECONDS, **options)
        except Reject as exc:
            # Celery rejects a task whose retry it could not send: the broker failed, not the page, so
            # the task goes back to its queue instead of into the dead letters, where its report would
            # wait for ever.
            raise Reject(exc.reason, requeue=True) from exc

    @app.task(name=FETCH_PAGE_TASK, bind=True, max_retries=None)  # type: ignore[untyped-decorator]
    def fetch_page_task(self: Any, message: str, crashes: int = 0, waits: int = 0, **later: Any) -> None:
        # `later`: counters a newer release may carry, which a replica of this one ignores in an upgrade.
        verdict = pipeline.process(TaskDelivery(message, self.request.retries, crashes, waits))
        if isinstance(verdict, Ack):
            return
        if isinstance(verdict, RetryAfter):
            # Celery will count this retry too: what the pipeline did not count is a wait.
            uncounted = self.request.retries + 1 - verdict.retries
            retry_later(self, verdict.delay, args=[message], kwargs={"crashes": crashes, "waits": uncounted})
        if isinstance(verdict, Requeue):
            retry_later(self, CRASH_RETRY_SECONDS, args=[message], kwargs={"crashes": crashes + 1, "waits": waits})
        if isinstance(verdict, DeadLetter):
            # The broker dead-letters the task into fetcher.tasks.dlq; the pipeline logged the reason.
            raise Reject(verdict.reason, requeue=False)


class SettledInThreads:
    """A queue whose messages are each processed in a thread of their own, so that the consumer goes on
    taking the next: a report request holds its thread while its first page attempts run.

    Only the ack or requeue goes back to the consumer's event loop, which alone writes to the
    connection the message came on, as Celery's own pool does with a task's ack.
    """

    def __init__(self, queue: QueueConsumer, threads: int) -> None:
        self.queue = queue
        self.subscription = queue.subscription
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=queue.subscription.queue_name)
        self._on_loop: Callable[[Callable[[], None]], object] = _now

    def settle_through(self, call_soon: Callable[[Callable[[], None]], object]) -> None:
        self._on_loop = call_soon

    def __call__(self, message: Message) -> None:
        self._threads.submit(self._process, message)

    def close(self) -> None:
        """Takes no more: a message not started yet goes back to its queue with the channel it came on."""
        self._threads.shutdown(wait=False, cancel_futures=True)

    def _process(self, message: Message) -> None:
        held = cast(Message, _SettledOnLoop(message, self._on_loop))
        try:
            verdict = self.queue.pipeline.process(KombuDelivery(message))
        except Exception:
            # The pipeline settles every handler error itself; a fault of its own is a crash, which
            # the queue's delivery limit bounds.
            log.exception("message.not_processed", queue=self.subscription.queue_name)
            held.requeue()
            return
        for pause in (*VERDICT_PAUSES_SECONDS, None):
            try:
                self.queue.settle(held, verdict)
                return
            except PublishNotTaken as exc:
                # The broker takes no republish (a queue electing its leader): the message is held, and
                # tried again, as long as the channel it came on lives; once that closes, the broker
                # hands the message out again.
                if pause is None or not getattr(message.channel, "is_open", False):
                    log.warning("message.not_settled", queue=self.subscription.queue_name, error=str(exc))
                    return
                time.sleep(pause)


# On top of the consumer's own pauses for each republish: a thread may hold its message a while longer.
VERDICT_PAUSES_SECONDS = (5.0, 10.0, 20.0, 30.0, 30.0, 30.0)


class _SettledOnLoop:
    """A message whose ack and requeue are handed to the consumer's event loop."""

    def __init__(self, message: Message, on_loop: Callable[[Callable[[], None]], object]) -> None:
        self._message = message
        self._on_loop = on_loop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._message, name)

    def ack(self) -> None:
        self._on_loop(partial(_on_its_channel, self._message.ack))

    def requeue(self) -> None:
        self._on_loop(partial(_on_its_channel, self._message.requeue))


def _on_its_channel(settle: Callable[[], None]) -> None:
    try:
        settle()
    except Exception as exc:
        # The channel closed since (a reconnect): the broker hands the message out again.
        log.warning("message.not_settled", error=str(exc))


def _now(call: Callable[[], None]) -> None:
    call()


def consumer_step(queues: list[QueueConsumer | SettledInThreads]) -> type[bootsteps.ConsumerStep]:
    """A Celery consumer step that consumes the fetcher's event queues through the shared pipeline."""

    class EventQueuesStep(bootsteps.ConsumerStep):  # type: ignore[misc]
        def start(self, c: Any) -> None:
            for queue in queues:
                if isinstance(queue, SettledInThreads):
                    queue.settle_through(c.call_soon_ack)
            super().start(c)

        def shutdown(self, c: Any) -> None:
            for queue in queues:
                if isinstance(queue, SettledInThreads):
                    queue.close()
            super().shutdown(c)

        def get_consumers(self, channel: Any) -> list[Consumer]:
            return [
                # A prefetch bound, as every other service has: a backlog spreads across replicas.
                Consumer(
                    channel,
                    queues=[queue.subscription.queue()],
                    on_message=queue,
                    accept=None,
                    prefetch_count=EVENT_PREFETCH,
                )
                for queue in queues
            ]

    return EventQueuesStep
