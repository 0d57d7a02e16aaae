"""`werkbund check`: what works between this machine and the platform, in one table."""
from __future__ import annotations

import sys

import click

from werkbund.client.cli.common import (
    EXIT_REFUSED, LOGIN_ENVIRONMENT, Connection, environment, handle_errors, platform_options,
)


@click.command()
@environment(*LOGIN_ENVIRONMENT)
@platform_options
@handle_errors
def check(conn: Connection):
    """Check your access to the platform and print what works and what does not: broker (or
    local platform) reachable, TLS certificate valid and for which names, user name and password
    accepted, permissions on the queues of your tasks, blob store reachable. Exits 0 only when
    every check passes (a row marked n/a does not apply here)."""
    from rich.console import Console
    from rich.table import Table

    from werkbund.client.access_check import FAIL, PASS, all_passed, check_access

    rows = check_access(conn.platform, conn.url, conn.user, conn.password(),
                        ca_certificate=conn.creds.get("ca_certificate"), vhost=conn.creds.get("vhost"))
    table = Table(title=f"werkbund check: {conn.user} at {conn.url}", title_justify="left")
    table.add_column("check", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("detail", overflow="fold")
    style = {PASS: "green", FAIL: "bold red"}
    for row in rows:
        table.add_row(row.check, f"[{style.get(row.result, 'yellow')}]{row.result}[/]", row.detail)
    Console(width=max(100, Console().width), soft_wrap=False).print(table)
    passed = all_passed(rows)
    click.echo("all checks passed" if passed else f"{sum(r.result == FAIL for r in rows)} check(s) failed")
    sys.exit(0 if passed else EXIT_REFUSED)
