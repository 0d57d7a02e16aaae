"""Names on the broker that the AMQP front and the AMQP transport agree on.

Task and user names use only letters, digits, '.', '_' and '-', so the '/' in queue and exchange
names cannot be forged by choosing a clever task or user name.
"""
from __future__ import annotations

import hashlib
import re

REQUEST_EXCHANGE = "werkbund/requests"
REQUEST_QUEUE = "werkbund/requests"
REQUEST_KEY = "request"
REPLY_TO = "amq.rabbitmq.reply-to"
# The registration account is public on purpose: it may only publish requests, and the front
# accepts nothing but `register` and `login` from it. Its name is no valid platform user name.
REGISTRATION_NAME = "_register"
REGISTRATION_PASSWORD = "werkbund-register"

TO_AGGREGATOR = "to.aggregator"
TO_ALL = "to.all"

# AMQP carries a message's properties (headers included) in one frame, at most the negotiated
# frame_max (RabbitMQ: 128 KiB); a larger one makes the broker close the connection. So what can
# grow (a final model's metadata: its round history) travels at the start of the body instead, its
# length in this header: ``put_model`` (parameters, then the model bytes) and ``get_model``'s reply
# (metadata, then the model bytes), and a client refuses to publish headers above MAX_HEADER_BYTES.
PARAMS_BYTES = "params_bytes"
META_BYTES = "meta_bytes"
MAX_HEADER_BYTES = 64 * 1024


def split_prefix(body: bytes, length) -> tuple[bytes, memoryview]:
    """(the JSON prefix, the rest) of a body whose first ``length`` bytes are JSON; ValueError if
    ``length`` is no whole number within the body."""
    if not isinstance(length, int) or isinstance(length, bool) or not 0 <= length <= len(body):
        raise ValueError(f"a prefix length of {length!r} does not fit a body of {len(body)} bytes")
    view = memoryview(body)
    return bytes(view[:length]), view[length:]


def broker_user(user: str, vhost: str) -> str:
    """The broker account of platform user ``user``: one namespace per platform (vhost), and no
    platform name (no '@' allowed) can ever equal a broker account such as 'guest'."""
    return f"{user}@{vhost}"


def registration_user(vhost: str) -> str:
    return broker_user(REGISTRATION_NAME, vhost)


# A login opens a broker account of its own, ``<user>~<session id>@<vhost>``, whose password is the
# session's random token; no user name contains '~', so a session account is never a user's name.
SESSION_SEPARATOR = "~"
SESSION_ID_LENGTH = 32
_SESSION_ID = re.compile(f"[0-9a-f]{{{SESSION_ID_LENGTH}}}")


def session_id(token: str) -> str:
    """The public id of a session: the start of the digest the platform keeps of its token
    (``passwords.token_digest``, not imported here: that module hashes a dummy password at import)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:SESSION_ID_LENGTH]


def session_name(user: str, sid: str) -> str:
    """The account's name within the vhost (``broker_user`` adds ``@<vhost>``)."""
    return f"{user}{SESSION_SEPARATOR}{sid}"


def session_account(user: str, sid: str, vhost: str) -> str:
    return broker_user(session_name(user, sid), vhost)


def parse_account(broker_name, vhost: str) -> tuple[str, str | None] | None:
    """(user, session id) of a session account of this vhost; (name, None) for an account of the old
    form ``<user>@<vhost>`` (the registration account, or one from before per-session accounts); None
    for any other account."""
    suffix = "@" + vhost
    if not (isinstance(broker_name, str) and broker_name.endswith(suffix) and len(broker_name) > len(suffix)):
        return None
    local = broker_name[:-len(suffix)]
    user, sep, sid = local.partition(SESSION_SEPARATOR)
    if not sep:
        return local, None
    if user and _SESSION_ID.fullmatch(sid):
        return user, sid
    return None


def platform_user(broker_name, vhost: str) -> str | None:
    """The platform user behind a session account of this vhost, or None."""
    parsed = parse_account(broker_name, vhost)
    return parsed[0] if parsed and parsed[1] is not None else None


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
