"""`werkbund ... --help` documents every option with its default, the environment variables a command
reads (as options' [env var: ...] or an "Environment:" paragraph) and the keys of a credentials file.

The whole click tree is walked, so a command or option added later without help fails here by name."""
import json
import os

import click
import pytest
from click.testing import CliRunner

from werkbund.client.cli import common as cli_common
from werkbund.client.cli import cli
from werkbund.algorithms.fields import BATCH_SIZE, EPOCHS, LEARNING_RATE
from werkbund.platform.definition import FIELDS
from werkbund.platform.errors import Unavailable

CREDENTIALS_KEYS = ("platform", "url", "user", "password", "org", "vhost", "ca_certificate")
SKIPPED = ("help", "version")


def _commands(command=cli, path=()):
    """(path, command) for the root and every command and group below it."""
    yield path, command
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            yield from _commands(command.commands[name], (*path, name))


COMMANDS = list(_commands())
OPTIONS = [(path, param) for path, command in COMMANDS for param in command.params if param.name not in SKIPPED]


def _name(path, param=None) -> str:
    where = "werkbund" + "".join(f" {p}" for p in path)
    return f"{where} {param.opts[0]}" if param is not None else where


def _default(param):
    """The static default, with click's "no default" sentinel as None (to_info_dict normalizes it)."""
    return param.to_info_dict().get("default")


def _has_default(value) -> bool:
    """A default worth telling: not None or False (0 is one, hence no `in (None, False)`)."""
    return not (value is None or value is False)


def _help(path) -> str:
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="werkbund", terminal_width=200)
    assert result.exit_code == 0, f"{_name(path)} --help exited {result.exit_code}: {result.output}"
    return result.output


def test_the_tree_is_the_whole_cli():
    names = {" ".join(path) for path, _ in COMMANDS}
    for expected in ("create", "list", "info", "join", "aggregate", "participate", "demo", "local-platform",
                     "ledger", "ledger verify", "ledger prove", "platform serve", "usecase pdm"):
        assert expected in names, f"werkbund {expected} is missing from the command tree"


@pytest.mark.parametrize("param", [param for _, param in OPTIONS], ids=[_name(p, o) for p, o in OPTIONS])
def test_every_option_has_help(param):
    assert isinstance(param, click.Option), f"{param.name}: a click.Argument cannot carry help; use an option"
    assert (param.help or "").strip(), f"{param.opts[0]} has no help text"


@pytest.mark.parametrize("param", [param for _, param in OPTIONS], ids=[_name(p, o) for p, o in OPTIONS])
def test_every_default_is_shown_or_told(param):
    default = _default(param)
    shown = bool(param.show_default) and _has_default(default) and default not in ("", ())
    told = "default" in (param.help or "").lower()
    if _has_default(default):
        assert shown or told, f"{param.opts[0]} defaults to {default!r} but neither shows nor names it"
    if not param.required:  # where no static default exists, the help says what happens without the option
        assert shown or told, f"{param.opts[0]}: the help does not say what the default is"


@pytest.mark.parametrize("param", [param for _, param in OPTIONS if param.envvar],
                         ids=[_name(p, o) for p, o in OPTIONS if o.envvar])
def test_every_envvar_is_shown(param):
    assert param.show_envvar, f"{param.opts[0]} reads {param.envvar} but does not show it in --help"


CREDENTIALS = [(path, param) for path, param in OPTIONS if param.name == "credentials"]


@pytest.mark.parametrize("param", [param for _, param in CREDENTIALS], ids=[_name(p, o) for p, o in CREDENTIALS])
def test_credentials_help_names_every_key(param):
    missing = [key for key in CREDENTIALS_KEYS if key not in param.help]
    assert not missing, f"{param.opts[0]} help does not name the credentials key(s) {', '.join(missing)}"


def test_the_credentials_keys_are_those_read():
    assert CREDENTIALS, "no command takes --credentials"
    assert set(cli_common.CREDENTIALS_KEYS) == set(CREDENTIALS_KEYS)
    assert set(cli_common._cloud_options({key: 1 for key in CREDENTIALS_KEYS + ("other",)})) <= set(CREDENTIALS_KEYS)


@pytest.mark.parametrize("path", [path for path, _ in COMMANDS], ids=[_name(path) for path, _ in COMMANDS])
def test_help_exits_0_and_shows_the_envvars(path):
    command = dict(COMMANDS)[path]
    text = _help(path)
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar and param.name not in SKIPPED:
            assert f"env var: {param.envvar}" in text, f"{_name(path, param)}: [env var: {param.envvar}] not shown"
    if any(param.name == "credentials" for param in command.params):  # commands that talk to a platform
        assert "Environment:" in text and "WERKBUND_HOME" in text, f"{_name(path)} --help names no WERKBUND_HOME"
        if path != ("logout",):
            for name in ("WERKBUND_PASSWORD", "WERKBUND_KEY_PASSPHRASE"):
                assert name in text, f"{_name(path)} --help does not name {name}"


def test_top_level_help_names_werkbund_home():
    text = _help(())
    assert "WERKBUND_HOME" in text and "~/.werkbund" in text


@pytest.mark.parametrize("path,names", [
    (("local-platform",), ("WERKBUND_HOME", "WERKBUND_LEDGER_KEY")),
    (("platform", "serve"), ("WERKBUND_HOME", "WERKBUND_LEDGER_KEY")),
    (("demo",), ("WERKBUND_MNIST_DIR",)),
    (("join",), ("WERKBUND_MNIST_DIR", "WERKBUND_BLOB_THRESHOLD")),
    (("participate",), ("WERKBUND_RECONNECT_SECONDS",)),
    (("aggregate",), ("WERKBUND_RECONNECT_SECONDS",)),
    (("usecase", "pdm"), ("WERKBUND_DATA_DIR",)),
])
def test_commands_name_the_environment_they_read(path, names):
    text = _help(path)
    for name in names:
        assert name in text, f"{_name(path)} --help does not name {name}"


@pytest.mark.parametrize("option,field", [("--quorum", "quorum"), ("--rounds", "rounds"),
                                          ("--algorithm", "algorithm"), ("--round-timeout", "round_timeout"),
                                          ("--min-updates", "min_updates")])
def test_create_names_the_platform_defaults(option, field):
    param = next(p for p in cli.commands["create"].params if option in p.opts)
    assert f"else {FIELDS[field][1]}" in param.help, f"werkbund create {option}: {param.help!r}"


@pytest.mark.parametrize("option,field", [("--epochs", EPOCHS), ("--batch-size", BATCH_SIZE),
                                          ("--learning-rate", LEARNING_RATE)])
def test_create_names_the_defaults_of_the_training_fields(option, field):
    param = next(p for p in cli.commands["create"].params if option in p.opts)
    assert f"else the algorithm's, {field.default} " in param.help, f"werkbund create {option}: {param.help!r}"


def test_create_help_lists_the_fields_each_installed_algorithm_declares():
    text = _help(("create",))
    assert "--set NAME=VALUE" in text and "Algorithm fields" in text
    assert "clusters=3" in text and "bins=10" in text and "POM 1, 2, 3" in text


def test_algorithms_tells_each_field_from_the_declaration():
    text = CliRunner().invoke(cli, ["algorithms", "--algorithm", "kmeans"], prog_name="werkbund").output
    assert "clusters" in text and "an integer in [1, 10000]; default 3" in text and "POM 1 (plain)" in text
    listed = json.loads(CliRunner().invoke(cli, ["algorithms", "--json"], prog_name="werkbund").output)
    statistics = next(a for a in listed if a["name"] == "statistics")
    assert [o["name"] for o in statistics["participant_options"]] == ["hold_back"]
    assert statistics["distribution"] == "werkbund" and statistics["model_suffix"] == ".json"
    missing = CliRunner().invoke(cli, ["algorithms", "--algorithm", "nope"], prog_name="werkbund")
    assert missing.exit_code == 1 and "not installed" in missing.output


def test_register_needs_an_org(tmp_path, monkeypatch):
    monkeypatch.setenv("WERKBUND_HOME", str(tmp_path))
    result = CliRunner().invoke(cli, ["register", "--url", "http://127.0.0.1:9", "--user", "alice"],
                                prog_name="werkbund")
    assert result.exit_code == 2 and "no organisation" in result.output, result.output


def test_register_takes_the_org_from_the_credentials_file(tmp_path, monkeypatch):
    seen = {}

    class Refusing:
        def register(self, user, password, org):
            seen.update(user=user, org=org)
            raise Unavailable("stopped here")

    monkeypatch.setenv("WERKBUND_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WERKBUND_PASSWORD", "secret-password-1")
    monkeypatch.delenv("WERKBUND_KEY_PASSPHRASE", raising=False)
    monkeypatch.setattr(cli_common.Connection, "transport", lambda self: Refusing())
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"platform": "local", "url": "http://127.0.0.1:9", "user": "alice", "org": "acme"}))
    result = CliRunner().invoke(cli, ["register", "--credentials", str(creds)], prog_name="werkbund")
    assert result.exit_code == cli_common.EXIT_UNAVAILABLE, result.output
    assert seen == {"user": "alice", "org": "acme"}


@pytest.mark.parametrize("db, expected", [
    ("nonsense", "is not a database URL"),
    pytest.param("postgresql+psycopg://postgres@127.0.0.1:5432/werkbund_no_such_db",
                 'database "werkbund_no_such_db" does not exist', marks=pytest.mark.postgres),
])
def test_a_platform_that_cannot_start_says_why_in_one_line(tmp_path, db, expected):
    """`werkbund platform serve` with a database that does not exist printed a 147-line traceback."""
    import subprocess
    import sys

    werkbund = os.path.join(os.path.dirname(sys.executable), "werkbund")
    done = subprocess.run([werkbund, "platform", "serve",
                           "--broker", "amqp://guest:guest@127.0.0.1:5672/", "--db", db, "--no-blobs"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "WERKBUND_HOME": str(tmp_path)})
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr
