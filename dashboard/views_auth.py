"""Log in, register (user and organisation), log out: the same calls as `werkbund login` and `register`."""
from __future__ import annotations

import logging

from flask import g, redirect, render_template, request, url_for
from pydantic import ValidationError

from werkbund.dashboard.forms import LoginForm, RegisterForm, field_errors, safe_next
from werkbund.dashboard.sessions import close_quietly
from werkbund.platform.errors import AuthenticationFailed, UserExists, WerkbundError

log = logging.getLogger("werkbund.dashboard")


def _transport_options() -> dict:
    return {k: g.settings.credentials[k] for k in ("vhost", "ca_certificate") if k in g.settings.credentials}


def _logged_in(session, message: str):
    previous = g.bs.werkbund
    g.bs.werkbund = session
    g.bs = g.store.renew(g.bs)  # a fresh id once logged in
    if previous is not None and previous is not session and not g.runs.uses(previous):
        close_quietly(previous)
    g.bs.say(message)
    return redirect(safe_next(request.args.get("next"), url_for("tasks")))


def register(app):
    @app.route("/login", methods=["GET", "POST"])
    def login():
        errors, values = {}, {"user": g.settings.default_user or ""}
        if request.method == "POST":
            values = {"user": request.form.get("user", "").strip()}
            try:
                form = LoginForm(user=values["user"], password=request.form.get("password", ""))
            except ValidationError as exc:
                errors = field_errors(exc)
            else:
                try:
                    session = connect(form.user, form.password)
                except AuthenticationFailed as exc:
                    errors["password"] = exc.message
                except WerkbundError as exc:
                    errors["form"] = exc.message
                else:
                    return _logged_in(session, f"Logged in as {session.name}.")
        status = 400 if errors else 200
        return render_template("login.html", errors=errors, values=values), status

    @app.route("/register", methods=["GET", "POST"], endpoint="register")
    def register_page():
        errors, values = {}, {}
        if request.method == "POST":
            values = {k: request.form.get(k, "").strip() for k in ("user", "org")}
            try:
                form = RegisterForm(**values, password=request.form.get("password", ""),
                                    password2=request.form.get("password2", ""))
            except ValidationError as exc:
                errors = field_errors(exc)
            else:
                if form.password != form.password2:
                    errors["password2"] = "the two passwords differ"
                else:
                    try:
                        session = create_account(form.user, form.password, form.org)
                    except UserExists as exc:
                        errors["user"] = exc.message
                    except WerkbundError as exc:
                        errors["password" if "password" in exc.message.lower() else "form"] = exc.message
                    else:
                        return _logged_in(session, f"Welcome, {session.name} of {form.org}: your account and "
                                                   "your ledger identity key are made.")
        status = 400 if errors else 200
        return render_template("register.html", errors=errors, values=values), status

    @app.post("/logout")
    def logout():
        from werkbund.client import home_files

        session = g.bs.werkbund
        g.bs.werkbund = None
        if session is not None:
            if g.store.sessions_of(session) == 0 and not g.runs.uses(session):
                try:  # as `werkbund logout` does: the platform revokes the token (and the broker account)
                    session.logout()
                except Exception as exc:  # noqa: BLE001 - a platform that is gone: forget the token here anyway
                    log.warning("logout of %s: %s", session.name, exc)
                    home_files.forget_token(session.url, session.name)
                    close_quietly(session)
        g.bs = g.store.renew(g.bs)
        g.bs.say("Logged out." + (" Your runs go on in this dashboard." if session and g.runs.uses(session) else ""))
        return redirect(url_for("login"))


def connect(user: str, password: str):
    """Log in with the password (never a cached token: whoever uses the browser must know it)."""
    from werkbund.client import home_files
    from werkbund.client.api import User, make_transport
    from werkbund.client.python_api.session import Session

    s = g.settings
    transport = make_transport(s.platform, s.url, inproc=s.inproc, **_transport_options())
    try:
        data = transport.login(user, password)
    except Exception:
        _close_transport(transport)
        raise
    if data.get("token") and s.platform != "inproc":
        home_files.save_token(s.url, user, data["token"])
    return Session(User(transport, home_files.identity_file(s.url, user, password)), s.platform, s.url)


def create_account(user: str, password: str, org: str):
    """Register as `werkbund register` does: the account, the identity key made here, logged in."""
    from werkbund.client import home_files
    from werkbund.client.api import User, make_transport
    from werkbund.client.python_api.session import Session, register_account

    s = g.settings
    transport = make_transport(s.platform, s.url, inproc=s.inproc, **_transport_options())
    try:
        register_account(transport, s.url, user, password, org, keep_token=s.platform != "inproc")
    except Exception:
        _close_transport(transport)
        raise
    return Session(User(transport, home_files.identity_file(s.url, user, password)), s.platform, s.url)


def _close_transport(transport) -> None:
    try:
        transport.close()
    except Exception:  # nothing was open
        pass
