"""The control commands every front offers, mapped onto the platform core.

A front turns a request into ``dispatch(service, caller, command, params)`` and
the result (or a :class:`WerkbundError`) into its own reply. Parameters are
checked here once, so no front writes a rule of its own.
"""
from __future__ import annotations

from werkbund.platform.errors import InvalidInput
from werkbund.platform.service import PlatformService

# command -> (service method, required params, optional params)
COMMANDS = {
    "whoami": ("whoami", (), ()),
    "create_task": ("create_task", ("task", "definition"), ()),
    "list_tasks": ("list_tasks", (), ("status", "creator", "algorithm", "search")),
    "task_info": ("task_info", ("task",), ()),
    "delete_task": ("delete_task", ("task",), ()),
    "join_task": ("join_task", ("task",), ("schema",)),
    "leave_task": ("leave_task", ("task",), ()),
    "participants": ("participants", ("task",), ()),
    "start_task": ("start_task", ("task",), ()),
    "record_round": ("record_round", ("task", "number"), ("reported", "rejected", "missing", "metrics")),
    "rounds": ("rounds", ("task",), ()),
    "finish_task": ("finish_task", ("task",), ("reason",)),
    "fail_task": ("fail_task", ("task", "reason"), ()),
    "transfer_token": ("transfer_token", ("task",), ()),  # for the cloud platform's blob store
    # the ledger (platform/ledger/service.py), members of the task only
    "set_identity_key": ("ledger.set_identity_key", ("public_key",), ()),
    "identity_key": ("ledger.identity_key", ("user",), ()),
    "ledger_append": ("ledger.append", ("task", "entry", "signature"), ()),
    "ledger_head": ("ledger.head", ("task",), ()),
    "ledger_entries": ("ledger.entries", ("task",), ("start", "end")),
    "ledger_checkpoint": ("ledger.checkpoint", ("task",), ("size",)),
    "ledger_inclusion": ("ledger.inclusion_proof", ("task", "seq"), ("size",)),
    "ledger_consistency": ("ledger.consistency_proof", ("task", "old_size"), ("new_size",)),
    "ledger_cosign": ("ledger.cosign", ("task", "size", "signature"), ()),
    "ledger_keys": ("ledger.keys", ("task",), ()),
    "ledger_bundle": ("ledger.bundle", ("task",), ()),
    # identity key rotation and revocation, recorded on the caller's task logs
    "ledger_key_logs": ("ledger.key_logs", (), ()),
    "rotate_identity_key": ("ledger.rotate_identity_key", ("public_key", "entries"), ()),
    "revoke_identity_key": ("ledger.revoke_identity_key", (), ("reason",)),
    "key_history": ("ledger.key_history", (), ("user",)),
}
# commands that need no logged-in caller
PUBLIC_COMMANDS = ("register", "login")


def dispatch(service: PlatformService, caller: str, command: str, params: dict | None):
    """Run one authenticated control command for ``caller``."""
    if command not in COMMANDS:
        raise InvalidInput(f"unknown command {command!r}")
    params = params or {}
    if not isinstance(params, dict):
        raise InvalidInput("command parameters must be a JSON object")
    method, required, optional = COMMANDS[command]
    missing = [p for p in required if p not in params]
    if missing:
        raise InvalidInput(f"command {command!r} needs {', '.join(missing)}")
    unknown = sorted(set(params) - set(required) - set(optional))
    if unknown:
        raise InvalidInput(f"command {command!r} does not take {', '.join(unknown)}")
    target = service
    for part in method.split("."):
        target = getattr(target, part)
    return target(caller, **params)


def dispatch_public(service: PlatformService, command: str, params: dict | None):
    """Run ``register`` or ``login``, the two commands a stranger may send."""
    params = params or {}
    if not isinstance(params, dict):
        raise InvalidInput("command parameters must be a JSON object")
    if command == "register":
        key = params.get("public_key")
        if key is not None:
            service.ledger.check_public_key(key)
        data = service.register(_str(params, "user"), _str(params, "password"), _str(params, "org"))
        if key is not None:  # the user's Ed25519 identity key, made on their own machine
            data.update(service.ledger.set_identity_key(data["user"], _str(params, "public_key")))
        return data
    if command == "login":
        return service.login(_str(params, "user"), _str(params, "password"))
    raise InvalidInput(f"unknown command {command!r}")


def _str(params: dict, key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str):
        raise InvalidInput(f"{key!r} must be given as a string")
    return value
