"""Names on the broker that the AMQP front and the AMQP transport agree on.

Task and user names use only letters, digits, '.', '_' and '-', so the '/' in queue and exchange
names cannot be forged by choosing a clever task or user name.
"""
from __future__ import annotations

import re

REQUEST_EXCHANGE = "werkbund/requests"
REQUEST_QUEUE = "werkbund/requests"
REQUEST_KEY = "request"
REPLY_TO = "amq.rabbitmq.reply-to"
# The registration account is public on purpose: it may only publish requests, and the front
# accepts nothing but `register` from it. Its name is no valid platform user name.
REGISTRATION_NAME = "_register"
REGISTRATION_PASSWORD = "werkbund-register"

TO_AGGREGATOR = "to.aggregator"
TO_ALL = "to.all"


def broker_user(user: str, vhost: str) -> str:
    """The broker account of platform user ``user``: one namespace per platform (vhost), and no
    platform name (no '@' allowed) can ever equal a broker account such as 'guest'."""
    return f"{user}@{vhost}"


def registration_user(vhost: str) -> str:
    return broker_user(REGISTRATION_NAME, vhost)


def platform_user(broker_name, vhost: str) -> str | None:
    """The platform user behind a broker account of this vhost, or None."""
    suffix = "@" + vhost
    if isinstance(broker_name, str) and broker_name.endswith(suffix) and len(broker_name) > len(suffix):
        return broker_name[:-len(suffix)]
    return None


def task_exchange(task: str) -> str:
    return f"wb/{task}"


def aggregator_queue(task: str) -> str:
    return f"wb/{task}/aggregator"


def participant_queue(task: str, user: str) -> str:
    return f"wb/{task}/p/{user}"


def to_user(user: str) -> str:
    return f"to.user.{user}"


def routing_key(to: str) -> str:
    """The routing key of a message to 'aggregator', 'all' or one participant."""
    if to == "aggregator":
        return TO_AGGREGATOR
    if to == "all":
        return TO_ALL
    return to_user(to)


def any_of(names) -> str:
    """A RabbitMQ permission regex matching exactly these names (nothing when empty)."""
    names = sorted(set(names))
    return "^(" + "|".join(re.escape(n) for n in names) + ")$" if names else "^$"
