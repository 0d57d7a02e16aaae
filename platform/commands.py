"""The control commands every front offers, mapped onto the platform core.

A front turns a request into ``dispatch(service, caller, command, params)`` and
the result (or a :class:`WerkbundError`) into its own reply. Parameters are
checked here once, against their models in ``command_schemas.py``, so no front
writes a rule of its own.
"""
from __future__ import annotations

from werkbund.platform.command_schemas import PARAMS, PUBLIC_PARAMS, validate_params
from werkbund.platform.errors import InvalidInput
from werkbund.platform.request_replies import CURRENT, RECORDED, check_request_id, recorded_command, run_once
from werkbund.platform.service import PlatformService

# command -> the service method it runs; its parameters: command_schemas.PARAMS[command]
COMMANDS = {
    "whoami": "whoami",
    "create_task": "create_task",
    "list_tasks": "list_tasks",
    "task_info": "task_info",
    "delete_task": "delete_task",
    "join_task": "join_task",
    "leave_task": "leave_task",
    "participants": "participants",
    "start_task": "start_task",
    "record_round": "record_round",
    "rounds": "rounds",
    "finish_task": "finish_task",
    "fail_task": "fail_task",
    "transfer_token": "transfer_token",  # for the cloud platform's blob store
    # the ledger (platform/ledger/service.py), members of the task only
    "set_identity_key": "ledger.set_identity_key",
    "identity_key": "ledger.identity_key",
    "ledger_append": "ledger.append",
    "ledger_head": "ledger.head",
    "ledger_entries": "ledger.entries",
    "ledger_checkpoint": "ledger.checkpoint",
    "ledger_inclusion": "ledger.inclusion_proof",
    "ledger_consistency": "ledger.consistency_proof",
    "ledger_cosign": "ledger.cosign",
    "ledger_audit": "ledger.audit",
    "ledger_relay": "relay_round",  # (ledger.relay, and the round's record with it)
    "ledger_keys": "ledger.keys",
    "ledger_bundle": "ledger.bundle",
    # identity key rotation and revocation, recorded on the caller's task logs
    "ledger_key_logs": "ledger.key_logs",
    "rotate_identity_key": "ledger.rotate_identity_key",
    "revoke_identity_key": "ledger.revoke_identity_key",
    "key_history": "ledger.key_history",
}
# commands that need no logged-in caller
PUBLIC_COMMANDS = tuple(PUBLIC_PARAMS)
assert set(COMMANDS) == set(PARAMS), "every command has its parameters in command_schemas.PARAMS"
assert RECORDED <= set(COMMANDS), "request_replies.RECORDED names commands"


def dispatch(service: PlatformService, caller: str, command: str, params: dict | None,
             request_id: str | None = None):
    """Run one authenticated control command for ``caller``. With a request id (given, or set by the
    front in ``request_replies.CURRENT``) a state-changing command is done once per id: a repetition
    answers the reply recorded with it (``request_replies.py``)."""
    if command not in COMMANDS:
        raise InvalidInput(f"unknown command {command!r}")
    if request_id is None:
        request_id = CURRENT.get()
    if request_id is not None:
        check_request_id(request_id)
    params = validate_params(command, PARAMS[command], {} if params is None else params)
    target = service
    for part in COMMANDS[command].split("."):
        target = getattr(target, part)
    if request_id is None or not recorded_command(command, params):
        return target(caller, **params)
    return run_once(service, caller, command, request_id, lambda: target(caller, **params))


def dispatch_public(service: PlatformService, command: str, params: dict | None):
    """Run ``register`` or ``login``, the two commands a stranger may send."""
    if command not in PUBLIC_PARAMS:
        raise InvalidInput(f"unknown command {command!r}")
    params = validate_params(command, PUBLIC_PARAMS[command], {} if params is None else params)
    if command == "register":
        key = params.get("public_key")
        if key is not None:
            service.ledger.check_public_key(key)
        data = service.register(params["user"], params["password"], params["org"])
        if key is not None:  # the user's Ed25519 identity key, made on their own machine
            data.update(service.ledger.set_identity_key(data["user"], key))
        return data
    return service.login(params["user"], params["password"])
