"""`werkbund ledger ...`: show, verify, export a task's ledger; record and prove maintenance events;
rotate, revoke and replace identity keys (and the operator's `werkbund platform reset-key`)."""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
import time
from pathlib import Path

import click

from werkbund.client import home_files
from werkbund.client.cli.common import (
    CREDENTIALS_HELP, LOGIN_ENVIRONMENT, Connection, emit_json, environment, handle_errors, platform_options,
)
from werkbund.client.identity import generate_identity, is_encrypted, load_identity
from werkbund.client.ledger import LedgerError, bundle_report, publish, revoke_key, rotate_key, verify_task_ledger
from werkbund.platform.errors import InvalidInput
from werkbund.ledger import entries as E
from werkbund.ledger import merkle
from werkbund.ledger.canonical import canonical_json
from werkbund.ledger.verify import keys_in_force


@click.group()
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
UNENCRYPTED_HELP = ("Write the new key unencrypted (default: encrypted with WERKBUND_KEY_PASSPHRASE if set, "
                    "else with your password).")


def _new_key_file(conn: Connection, path: Path, unencrypted: bool):
    """The key waiting at ``path`` (made by an earlier run) or a new one written there, encrypted
    as `werkbund register` does."""
    if path.exists():
        return _load_pending(conn, path)
    return generate_identity(path, None if unencrypted else (home_files.key_passphrase() or conn.password()))


def _load_pending(conn: Connection, path: Path):
    if not is_encrypted(path):
        return load_identity(path)
    passphrase = home_files.key_passphrase() or conn.password()
    return load_identity(path, passphrase)


LOST_KEY = "a lost key is reset by the platform operator: run `werkbund ledger new-key` and hand them its public key"


def _recorded_on(tasks: list[str]) -> str:
    return f"recorded on the ledger of {len(tasks)} task(s){': ' + ', '.join(tasks) if tasks else ''}"


def _pending(conn: Connection) -> Path:
    path = home_files.identity_path(conn.url, conn.user)
    return path.with_name(path.name + ".new")  # kept until the platform took the new key


@ledger.command("rotate-key")
@environment(*LOGIN_ENVIRONMENT)
@platform_options
@click.option("--unencrypted-key", is_flag=True, help=UNENCRYPTED_HELP)
@handle_errors
def rotate_key_command(conn: Connection, unencrypted_key):
    """Replace your identity key by a new one made here; the change, signed with the old key,
    goes on the ledger of every task you are in. Later entries must use the new key.
    The old key is unlocked, and the new one encrypted, with WERKBUND_KEY_PASSPHRASE if set,
    else with your password."""
    me = conn.login()
    if me.identity is None:
        raise InvalidInput(f"you have no identity key here to rotate; {LOST_KEY}")
    path, pending = home_files.identity_path(conn.url, conn.user), _pending(conn)
    new_key = _new_key_file(conn, pending, unencrypted_key)
    new_pub = E.encode_public_key(new_key)
    registered = me.transport.call("identity_key", user=conn.user)["public_key"]
    if registered == new_pub:  # an earlier run got through but did not finish here
        tasks = []
    else:
        tasks = rotate_key(me.transport, conn.user, me.identity, new_key)["tasks"]
    os.replace(pending, path)
    click.echo(f"rotated your identity key: new public key {new_pub} ({path}); {_recorded_on(tasks)}")


@ledger.command("revoke-key")
@environment(*LOGIN_ENVIRONMENT)
@platform_options
@click.option("--reason", default="", help="Why (e.g. 'key copied'); goes on the ledger (default: empty).")
@handle_errors
def revoke_key_command(conn: Connection, reason):
    """Revoke your identity key (compromised), signed with that key: recorded on the ledger of every
    task you are in; entries signed with it are refused from then on. A new key after that (or
    after a lost key) comes only through the platform operator (`werkbund ledger new-key`)."""
    me = conn.login()
    if me.identity is None:
        raise InvalidInput(f"revoking a key needs its signature and you have no identity key here; {LOST_KEY}")
    result = revoke_key(me.transport, conn.user, me.identity, reason)
    tasks = result["tasks"]
    click.echo(f"revoked the key {result['revoked']}; {_recorded_on(tasks)}")
    path = home_files.identity_path(conn.url, conn.user)
    if path.exists():
        aside = path.with_name(f"{path.name}.revoked-{int(time.time())}")
        os.replace(path, aside)
        click.echo(f"moved the revoked key file aside to {aside}")
    click.echo("for a new key run `werkbund ledger new-key` and hand its public key to the platform operator")


@ledger.command("new-key")
@environment(*LOGIN_ENVIRONMENT)
@platform_options
@click.option("--unencrypted-key", is_flag=True, help=UNENCRYPTED_HELP)
@handle_errors
def new_key_command(conn: Connection, unencrypted_key):
    """After a lost or revoked key: make a new key here and print its public key, to hand to the
    platform operator out of band (they check it is you and run `werkbund platform reset-key`).
    Run it again after the reset: the new key is then taken into use."""
    me = conn.login()
    path, pending = home_files.identity_path(conn.url, conn.user), _pending(conn)
    new_key = _new_key_file(conn, pending, unencrypted_key)
    new_pub = E.encode_public_key(new_key)
    registered = me.transport.call("identity_key", user=conn.user)["public_key"]
    if registered == new_pub:
        if path.exists():
            aside = path.with_name(f"{path.name}.replaced-{int(time.time())}")
            os.replace(path, aside)
            click.echo(f"moved the old key file aside to {aside}")
        os.replace(pending, path)
        click.echo(f"the operator's reset is in force: your identity key is now {new_pub} ({path})")
        return
    if registered is None and not me.transport.call("key_history"):  # never had a key: no operator needed
        me.transport.call("set_identity_key", public_key=new_pub)
        os.replace(pending, path)
        click.echo(f"registered your first identity key {new_pub} ({path})")
        return
    click.echo(f"your new public key: {new_pub}\n(kept in {pending}). Hand it to the platform operator out of "
               "band (in person, or by phone reading it back); they run\n"
               f"  werkbund platform reset-key --user {conn.user} --public-key {new_pub} --reason \"...\"\n"
               "then run `werkbund ledger new-key` again to take it into use.")


@click.command("reset-key")
@environment(("WERKBUND_HOME", "Where the default SQLite database is (default: ~/.werkbund)."),
             "WERKBUND_LEDGER_KEY")
@click.option("--db", envvar="WERKBUND_DB", show_envvar=True,
              help="The platform's SQLAlchemy database URL (default: the local platform's SQLite under "
                   "WERKBUND_HOME).")
@click.option("--user", "-u", "subject", required=True, help="Whose key to reset.")
@click.option("--public-key", required=True,
              help="The user's new public key (base64), as `werkbund ledger new-key` printed it to them and "
                   "they handed it to you out of band.")
@click.option("--reason", required=True,
              help="How you checked it was them (e.g. 'in person, ID card seen'); goes on the ledger.")
@handle_errors
def reset_key_command(db, subject, public_key, reason):
    """Operator only, on the platform's machine: replace a user's lost identity key by the public key
    they handed you out of band. A platform-signed key_reset entry goes on the log of every task
    they are in; every member sees it in `werkbund ledger verify` as an operator reset."""
    from werkbund.local_platform.server import default_db_url
    from werkbund.platform.service import PlatformService

    service = PlatformService(db or default_db_url(home_files.home()))
    done = service.ledger.reset_identity_key(subject, public_key, reason)
    tasks = done["tasks"]
    click.echo(f"reset {subject}'s identity key to {done['public_key']} (was {done['previous_key'] or 'none'}); "
               f"key_reset recorded on the ledger of {len(tasks)} task(s){': ' + ', '.join(tasks) if tasks else ''}")


# ------------------------------------------------------------------ maintenance log
def commitment(record: dict) -> str:
    return hashlib.sha256(canonical_json(record)).hexdigest()


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
    folder = home_files.maintenance_dir(conn.url, conn.user, task)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{result['seq']}.json"
    home_files._write_private(path, {"record": record, "commitment": digest, "seq": result["seq"]})
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
