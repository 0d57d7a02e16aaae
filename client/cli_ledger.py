"""`werkbund ledger ...`: show, verify, export a task's ledger; record and prove maintenance events."""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
import time
from pathlib import Path

import click
import rfc8785

from werkbund.client import state
from werkbund.client.cli import cli
from werkbund.client.cli_common import (
    CREDENTIALS_HELP, LOGIN_ENVIRONMENT, Connection, emit_json, environment, handle_errors, platform_options,
)
from werkbund.client.identity import generate_identity, load_identity
from werkbund.client.ledger import LedgerError, bundle_report, publish, rotate_key, verify_task_ledger
from werkbund.platform.errors import InvalidInput
from werkbund.platform.ledger import entries as E
from werkbund.platform.ledger import keys_in_force, merkle


@cli.group()
def ledger():
    """The task's tamper-evident ledger: show, verify, export, maintenance, prove, keys."""


@ledger.command()
@environment(*LOGIN_ENVIRONMENT)
@platform_options
@click.option("--task", required=True, help="The task's name.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the whole bundle (entries, keys, checkpoint) as JSON (default: one line per entry).")
@handle_errors
def show(conn: Connection, task, as_json):
    """List the entries of a task's ledger and its latest signed checkpoint."""
    bundle = conn.login().transport.call("ledger_bundle", task=task)
    if as_json:
        return emit_json(bundle)
    for item in bundle["entries"]:
        e = item["entry"]
        payload = json.dumps(e.get("payload"), sort_keys=True)
        click.echo(f"{e.get('seq'):>5} {e.get('timestamp')} {e.get('author'):<12} {e.get('type'):<20} "
                   f"{payload[:100] + ('...' if len(payload) > 100 else '')}")
    latest = bundle["latest"]
    cp = latest["checkpoint"]
    click.echo(f"checkpoint: size {cp['size']}, root {cp['root']}, {cp['timestamp']}, signed by the "
               f"platform key {bundle['platform_key']}")
    cosigners = ", ".join(sorted(latest.get("cosignatures") or {})) or "nobody yet"
    click.echo(f"cosigned by: {cosigners}")


def _finish(report) -> None:
    click.echo(str(report))
    if not report.ok:
        bad = report.bad_entries
        click.echo("error: the ledger does not verify" + (f"; first bad entry {bad[0]}" if bad else ""), err=True)
        sys.exit(1)


@ledger.command()
@environment(*LOGIN_ENVIRONMENT)
@click.option("--task", help="Verify the task's ledger on the platform (default: none; give it or --bundle).")
@click.option("--bundle", "bundle_file", type=click.Path(exists=True, dir_okay=False),
              help="Verify an exported bundle offline instead (default: none, verify online).")
@click.option("--platform-key",
              help="The platform key you trust (base64), for --bundle (default: the key in the bundle).")
@click.option("--url", envvar="WERKBUND_URL", show_envvar=True,
              help="Platform address, for --task (default: the credentials file's url).")
@click.option("--user", "-u", envvar="WERKBUND_USER", show_envvar=True,
              help="Your user name, for --task (default: the credentials file's user).")
@click.option("--credentials", type=click.Path(dir_okay=False), envvar="WERKBUND_CREDENTIALS", show_envvar=True,
              help=CREDENTIALS_HELP)
@click.option("--platform", "platform_kind", type=click.Choice(["local", "cloud"]), envvar="WERKBUND_PLATFORM",
              show_envvar=True, help="Which platform, for --task (default: the credentials file's, else local).")
@handle_errors
def verify(task, bundle_file, platform_key, url, user, credentials, platform_kind):
    """Check every signature, seq, prev link, the Merkle root, consistency with what you saw before."""
    if bundle_file:
        bundle = json.loads(Path(bundle_file).read_text())
        click.echo(f"offline verification of {bundle_file} (task {bundle.get('task')})")
        return _finish(bundle_report(bundle, None, None, platform_key))
    if not task:
        raise InvalidInput("give --task (online) or --bundle FILE (offline)")
    from werkbund.client.api import load_credentials

    creds = load_credentials(credentials) if credentials else {}
    conn = Connection(platform_kind or creds.get("platform", "local"), url or creds.get("url"),
                      user or creds.get("user"), creds)
    report, _ = verify_task_ledger(conn.login(), conn.url, task)
    _finish(report)


@ledger.command()
@environment(*LOGIN_ENVIRONMENT)
@platform_options
@click.option("--task", required=True, help="The task's name.")
@click.option("--out", type=click.Path(dir_okay=False), help="Bundle file (default: TASK-ledger.json).")
@handle_errors
def export(conn: Connection, task, out):
    """Write the entries, keys and signed checkpoint to a file for offline verification."""
    bundle = conn.login().transport.call("ledger_bundle", task=task)
    out = Path(out or f"{task}-ledger.json")
    out.write_text(json.dumps(bundle, indent=1))
    click.echo(f"wrote {out}: {len(bundle['entries'])} entries, checkpoint size "
               f"{bundle['latest']['checkpoint']['size']}")


# ------------------------------------------------------------------ identity keys
def _passphrase():
    return os.environ.get("WERKBUND_KEY_PASSPHRASE") or None


@ledger.command("rotate-key")
@environment(*LOGIN_ENVIRONMENT)
@platform_options
@handle_errors
def rotate_key_command(conn: Connection):
    """Replace your identity key by a new one made here; the change, signed with the old key,
    goes on the ledger of every task you are in. Later entries must use the new key.
    WERKBUND_KEY_PASSPHRASE, if set, unlocks the old key and encrypts the new one."""
    me = conn.login()
    if me.identity is None:
        raise InvalidInput("you have no identity key here to rotate; after a lost key use "
                           "`werkbund ledger revoke-key --new-key`")
    path = state.identity_path(conn.url, conn.user)
    pending = path.with_name(path.name + ".new")  # kept until the platform took the new key
    new_key = (load_identity(pending, _passphrase()) if pending.exists()
               else generate_identity(pending, _passphrase()))
    new_pub = E.encode_public_key(new_key)
    registered = me.transport.call("identity_key", user=conn.user)["public_key"]
    if registered == new_pub:  # an earlier run got through but did not finish here
        tasks = []
    else:
        tasks = rotate_key(me.transport, conn.user, me.identity, new_key)["tasks"]
    os.replace(pending, path)
    click.echo(f"rotated your identity key: new public key {new_pub} ({path}); recorded on the "
               f"ledger of {len(tasks)} task(s){': ' + ', '.join(tasks) if tasks else ''}")


@ledger.command("revoke-key")
@environment(*LOGIN_ENVIRONMENT)
@platform_options
@click.option("--reason", default="", help="Why (e.g. 'laptop lost'); goes on the ledger (default: empty).")
@click.option("--new-key", is_flag=True,
              help="Make and register a new key right after, encrypted with WERKBUND_KEY_PASSPHRASE if set "
                   "(default: no new key).")
@handle_errors
def revoke_key_command(conn: Connection, reason, new_key):
    """Revoke your identity key (lost or compromised): recorded on the ledger of every task you
    are in; entries signed with it are refused from then on."""
    me = conn.login()
    result = me.transport.call("revoke_identity_key", reason=reason)
    tasks = result["tasks"]
    click.echo(f"revoked the key {result['revoked']}; recorded on the ledger of {len(tasks)} "
               f"task(s){': ' + ', '.join(tasks) if tasks else ''}")
    path = state.identity_path(conn.url, conn.user)
    if path.exists():
        aside = path.with_name(f"{path.name}.revoked-{int(time.time())}")
        os.replace(path, aside)
        click.echo(f"moved the revoked key file aside to {aside}")
    if new_key:
        key = generate_identity(path, _passphrase())
        done = me.transport.call("set_identity_key", public_key=E.encode_public_key(key))
        click.echo(f"registered a new identity key {done['public_key']} ({path})")


# ------------------------------------------------------------------ maintenance log
def commitment(record: dict) -> str:
    return hashlib.sha256(rfc8785.dumps(record)).hexdigest()


@ledger.command()
@environment(*LOGIN_ENVIRONMENT)
@platform_options
@click.option("--task", required=True, help="The task's name.")
@click.option("--machine", required=True, help="The machine the event happened to.")
@click.option("--event", required=True, help="What happened (maintenance, failure, ...).")
@handle_errors
def maintenance(conn: Connection, task, machine, event):
    """Record a maintenance event: only its salted hash goes on the ledger, the tuple stays here."""
    me = conn.login()
    if me.identity is None:
        raise InvalidInput("you have no identity key here; register with `werkbund register` first")
    record = {"task": task, "machine": machine, "event": event, "time": E.utc_timestamp(),
              "salt": secrets.token_hex(16)}
    digest = commitment(record)
    result = publish(me.transport, task, conn.user, me.identity, "maintenance", {"commitment": digest})
    folder = state.maintenance_dir(conn.url, conn.user, task)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{result['seq']}.json"
    state._write_private(path, {"record": record, "commitment": digest, "seq": result["seq"]})
    click.echo(f"recorded entry {result['seq']} (commitment {digest}); the tuple is kept in {path}")


def _check_proof(proof: dict) -> list[str]:
    """Check a self-contained maintenance proof; return what was checked, raise LedgerError."""
    record, entry, cp = proof["record"], proof["entry"], proof["checkpoint"]
    digest = commitment(record)
    if entry.get("type") != "maintenance" or entry["payload"].get("commitment") != digest:
        raise LedgerError(f"entry {entry.get('seq')} does not hold the hash {digest} of this tuple")
    if not E.verify_entry_signature(entry, proof["signature"], proof["author_key"]):
        raise LedgerError(f"entry {entry['seq']} is not signed by {entry['author']}'s key")
    if not E.verify_checkpoint_signature(cp, proof["checkpoint_signature"], proof["platform_key"]):
        raise LedgerError("the checkpoint is not signed by the platform key")
    try:
        merkle.verify_inclusion(E.entry_leaf_hash(entry), entry["seq"], cp["size"],
                                [bytes.fromhex(p) for p in proof["inclusion"]], bytes.fromhex(cp["root"]))
    except merkle.ProofError as exc:
        raise LedgerError(f"entry {entry['seq']} is not in checkpoint {cp['size']}: {exc}") from None
    return [f"tuple hash {digest} is the commitment in entry {entry['seq']}",
            f"entry {entry['seq']} signed by {entry['author']} at {entry['timestamp']}",
            f"included in checkpoint size {cp['size']} root {cp['root']} signed by the platform "
            f"({cp['timestamp']})"]


@ledger.command()
@environment("WERKBUND_PASSWORD", "WERKBUND_HOME", "WERKBUND_KEY_PASSPHRASE")
@click.option("--task", help="The task's name, with --record (default: none).")
@click.option("--record", "record_file", type=click.Path(exists=True, dir_okay=False),
              help="A tuple file written by `ledger maintenance`, under WERKBUND_HOME (default: none).")
@click.option("--proof", "proof_file", type=click.Path(exists=True, dir_okay=False),
              help="Check a proof file offline instead (default: none, ask the platform).")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Write a self-contained proof here (default: none, only check).")
@click.option("--url", envvar="WERKBUND_URL", show_envvar=True,
              help="Address of the local platform, with --record (default: none).")
@click.option("--user", "-u", envvar="WERKBUND_USER", show_envvar=True,
              help="Your user name, with --record (default: none).")
@handle_errors
def prove(task, record_file, proof_file, out, url, user):
    """Show that a maintenance tuple was recorded on the ledger, and when."""
    if proof_file:
        proof = json.loads(Path(proof_file).read_text())
    else:
        if not (task and record_file):
            raise InvalidInput("give --task and --record FILE, or --proof FILE")
        saved = json.loads(Path(record_file).read_text())
        me = Connection("local", url, user, {}).login()
        seq = saved["seq"]
        items = me.transport.call("ledger_entries", task=task, start=seq, end=seq + 1)
        if not items:
            raise LedgerError(f"entry {seq} is not on the ledger of {task!r}")
        entry = items[0]["entry"]
        latest = me.transport.call("ledger_checkpoint", task=task)
        size = latest["checkpoint"]["size"]
        earlier = [(i["entry"], i["signature"]) for i in me.transport.call("ledger_entries", task=task, end=seq)]
        keys = keys_in_force(earlier, me.transport.call("ledger_keys", task=task)["keys"])
        proof = {"record": saved["record"], "entry": entry, "signature": items[0]["signature"],
                 "author_key": keys.get(entry["author"]),  # the key in force then (keys rotate)
                 "checkpoint": latest["checkpoint"], "checkpoint_signature": latest["signature"],
                 "platform_key": latest["platform_key"],
                 "inclusion": me.transport.call("ledger_inclusion", task=task, seq=seq, size=size)["proof"]}
    r = proof["record"]
    click.echo(f"machine {r['machine']}: {r['event']!r} at {r['time']}")
    for line in _check_proof(proof):
        click.echo(f"OK      {line}")
    if out:
        Path(out).write_text(json.dumps(proof, indent=1))
        click.echo(f"wrote the proof to {out}")
