"""A local platform in this process with alice, bob and carol registered through the CLI (each with
a werkbund home of their own), for the ledger tests: their CLI, their API handles, and SQL on the
platform's database to tamper with the stored log."""
import sqlite3

from click.testing import CliRunner

from werkbund.client import home_files
from werkbund.client.api import connect
from werkbund.client.cli import cli
from werkbund.local_platform.server import LocalPlatformServer
from werkbund.platform.db import sqlite_url

PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-22", "carol": "carol-secret-333"}


class Site:
    def __init__(self, tmp, monkeypatch):
        self.tmp, self.monkeypatch = tmp, monkeypatch
        self.db = tmp / "platform.sqlite"
        self.server = LocalPlatformServer(sqlite_url(self.db)).start()
        self.url = self.server.url

    def env(self, user):
        return {"WERKBUND_URL": self.url, "WERKBUND_USER": user, "WERKBUND_PASSWORD": PASSWORDS[user],
                "WERKBUND_HOME": str(self.tmp / user)}

    def cli(self, user, *args):
        for k, v in self.env(user).items():
            self.monkeypatch.setenv(k, v)
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    def api(self, user):
        self.monkeypatch.setenv("WERKBUND_HOME", str(self.tmp / user))
        return connect(url=self.url, user=user, password=PASSWORDS[user], identity=home_files.load_identity(self.url, user, PASSWORDS[user]))

    def register(self, users=(("alice", "acme"), ("bob", "beta"), ("carol", "gamma"))) -> "Site":
        for user, org in users:
            result = self.cli(user, "register", "--org", org)
            assert result.exit_code == 0, result.output
        return self

    def sql(self, statement, *args):
        with sqlite3.connect(self.db) as db:
            db.execute(statement, args)
