"""What handlers and services see of the message transport: no aio_pika here.

Handlers get a delivery's body, headers and redelivered flag (or a `Delivery`, in batches)
and return a `Disposition`; the consumer loop settles the delivery accordingly. Broker
failures raise `BrokerError` and its subclasses.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fanflow.errors import FanflowError


class Disposition(enum.Enum):
    """What the consumer loop does with a delivery once its handler is done."""

    ACK = "ack"
    #: back to the queue; the quorum delivery limit bounds how often
    REQUEUE = "requeue"
    #: to the dead-letter exchange, no redelivery
    REJECT = "reject"


@dataclass(frozen=True)
class Delivery:
    """One message as a batch handler sees it."""

    body: bytes
    headers: Mapping[str, Any]
    redelivered: bool
    message_id: str | None
    routing_key: str | None
    persistent: bool
    #: deliveries before this one (quorum queues' x-delivery-count; 0 the first time)
    delivery_count: int


@dataclass(frozen=True)
class Event:
    run_id: str
    name: str
    payload: dict[str, Any]


Handler = Callable[[bytes, dict[str, Any], bool], Awaitable[Disposition]]
BatchHandler = Callable[[list[Delivery]], Awaitable[Sequence[Disposition]]]


class BrokerError(FanflowError):
    """RabbitMQ refused an operation (missing queue, queue declared with other arguments,
    connection lost); the text names the operation."""


class PublishFailed(BrokerError):
    """The broker did not confirm a publish (nack, channel or connection lost, timeout).

    The message may or may not have been stored: retry with the same message_id.
    """


class Unroutable(PublishFailed):
    """A mandatory publish matched no queue (missing binding or queue)."""
