"""The catalogue's queue channels list exactly the events that RabbitMQ routes into those queues."""

from __future__ import annotations

import json

import pika
import yaml

from hotrepos_cli.asyncapi import render_document
from hotrepos_cli.catalogue import MESSAGE_TYPES, example_event
from shared.amqp import connect, declare_topology
from shared.publisher import encode_event
from shared.settings import CommonSettings
from shared.topology import SUBSCRIPTIONS, exchange_of


def test_each_work_queue_receives_exactly_the_messages_its_channel_lists(amqp_url: str, redis_url: str) -> None:
    document = yaml.safe_load(render_document())
    with connect(CommonSettings(amqp_url=amqp_url, redis_url=redis_url)) as connection:
        declare_topology(connection, SUBSCRIPTIONS)

    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for event_type in MESSAGE_TYPES:
            event = example_event(event_type)
            assert event is not None
            exchange = exchange_of(event_type)
            channel.basic_publish(
                exchange.name,
                event_type if exchange.type == "topic" else "",
                encode_event(event),
                pika.BasicProperties(content_type="application/cloudevents+json", delivery_mode=2),
            )
        for subscription in SUBSCRIPTIONS:
            received = []
            while True:
                method, _, body = channel.basic_get(subscription.queue_name, auto_ack=True)
                if method is None:
                    break
                received.append(json.loads(body)["type"])
            listed = document["channels"][subscription.queue_name]["messages"]
            assert sorted(received) == sorted(listed), subscription.queue_name
    finally:
        connection.close()
