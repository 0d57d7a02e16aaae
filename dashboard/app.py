"""The dashboard's Flask app: sessions, CSRF, security headers, and the pages' shared plumbing.

Every page and JSON endpoint acts as the logged-in werkbund user through the same Python API as
the CLI (``werkbund.Session``); the platform's rules decide every action, the dashboard adds no
permission of its own. What the app adds is the browser's side of security:

- a server-side session per browser, its random id in an HttpOnly, SameSite=Strict cookie (Secure
  over TLS), renewed at login and logout (``sessions.py``);
- a CSRF token per session, checked with ``secrets.compare_digest`` on every POST, from the form
  field ``csrf_token`` or the ``X-CSRF-Token`` header;
- the Host header checked against the address it serves (``TRUSTED_HOSTS``: no DNS rebinding);
- a Content-Security-Policy that allows scripts from the dashboard only (no inline script, no CDN),
  Jinja's autoescaping for every string from the platform, and ``textContent`` in the scripts.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from flask import Flask, Response, abort, g, jsonify, redirect, render_template, request, url_for

import werkbund.dashboard.api as api
import werkbund.dashboard.views_auth as views_auth
import werkbund.dashboard.views_datasets as views_datasets
import werkbund.dashboard.views_tasks as views_tasks
from werkbund.dashboard.runs import RunRegistry
from werkbund.dashboard.sessions import DEFAULT_IDLE_SECONDS, SessionStore, close_quietly
from werkbund.platform.errors import AuthenticationFailed, Unavailable, WerkbundError

log = logging.getLogger("werkbund.dashboard")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
PUBLIC_ENDPOINTS = {"static", "plotly_js", "login", "register", "openapi_spec", "health"}
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass
class DashboardSettings:
    """Where the dashboard logs its users in, and how it serves them."""

    platform: str = "local"  # "local" or "cloud" (or "inproc" in tests)
    url: str | None = None  # the platform's address
    credentials: dict = field(default_factory=dict)  # vhost, ca_certificate (cloud) from a credentials file
    inproc: object = None  # an InProcPlatform (tests only)
    data_root: Path | None = None  # dataset files must lie under it, if set
    tls: bool = False  # served over HTTPS: the cookie gets Secure
    hosts: tuple[str, ...] = ()  # the names the browser may use for this dashboard (besides loopback)
    idle_seconds: float = DEFAULT_IDLE_SECONDS
    default_user: str | None = None  # pre-filled on the login page

    @property
    def where(self) -> str:
        if self.platform == "cloud" and self.url:
            parsed = urlparse(self.url)
            return f"the cloud platform at {parsed.hostname}:{parsed.port or 5672}{parsed.path or ''}"
        return f"the {self.platform} platform at {self.url or 'this process'}"


def create_app(settings: DashboardSettings) -> Flask:
    here = Path(__file__).resolve().parent
    app = Flask(__name__, root_path=str(here), instance_path=str(here / "instance"),
                template_folder="templates", static_folder="static", static_url_path="/static")
    app.config.update(TRUSTED_HOSTS=list(dict.fromkeys([*LOOPBACK_NAMES, *settings.hosts])),
                      MAX_CONTENT_LENGTH=1 << 20, TEMPLATES_AUTO_RELOAD=False, JSON_SORT_KEYS=False)
    runs = RunRegistry()

    def on_drop(werkbund_session):  # an expired browser session: close its platform connection if idle
        if not runs.uses(werkbund_session):
            close_quietly(werkbund_session)

    store = SessionStore(settings.idle_seconds, on_drop=on_drop)
    app.extensions["werkbund_dashboard"] = {"settings": settings, "sessions": store, "runs": runs}

    @app.before_request
    def load_session():
        if request.routing_exception is not None or request.endpoint in ("static", "plotly_js", "health"):
            return None  # a foreign Host header or an unknown path: Flask answers it
        g.settings, g.runs, g.store = settings, runs, store
        g.bs = store.get(request.cookies.get(cookie_name()))
        g.new_cookie = g.bs is None
        if g.bs is None:
            g.bs = store.new()
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            token = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token")
            if not g.bs.check_csrf(token):
                return page_error("This form has expired or did not come from this dashboard. Reload the page and "
                                  "try again.", 400)
        if request.endpoint not in PUBLIC_ENDPOINTS and g.bs.werkbund is None:
            if request.path.startswith("/api/"):
                return jsonify({"error": {"code": "authentication_failed", "message": "log in first"}}), 401
            return redirect(url_for("login", next=request.full_path if request.query_string else request.path))
        return None

    @app.after_request
    def headers(response: Response):
        bs = getattr(g, "bs", None)
        if bs is not None and (g.get("new_cookie") or request.cookies.get(cookie_name()) != bs.id):
            response.set_cookie(cookie_name(), bs.id, httponly=True, samesite="Strict", secure=settings.tls, path="/")
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        if request.endpoint not in ("static", "plotly_js"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(AuthenticationFailed)
    def expired(error):  # the platform no longer accepts the session's token
        bs = getattr(g, "bs", None)
        if bs is not None and bs.werkbund is not None:
            bs.werkbund = None
            bs.say(f"The platform logged you out: {error.message}", "error")
        if request.path.startswith("/api/"):
            return jsonify({"error": error.to_dict()}), 401
        return redirect(url_for("login"))

    @app.errorhandler(Unavailable)
    def unavailable(error):
        if request.path.startswith("/api/"):
            return jsonify({"error": error.to_dict()}), 503
        return page_error(error.message, 503)

    @app.errorhandler(WerkbundError)
    def refused(error):  # the platform's own word: not found, not allowed, not in this state
        if request.path.startswith("/api/"):
            return jsonify({"error": error.to_dict()}), error.http_status
        return page_error(error.message, error.http_status)

    @app.errorhandler(404)
    def not_found(error):
        if request.path.startswith("/api/"):
            return jsonify({"error": {"code": "not_found", "message": "no such page"}}), 404
        return page_error("There is no such page.", 404)

    @app.get("/assets/plotly.min.js")
    def plotly_js():
        """plotly.js as the installed plotly package ships it: never from a CDN, never copied here."""
        path = plotly_path()
        if path is None:
            abort(404)
        response = Response(path.read_bytes(), mimetype="text/javascript")
        response.headers["Cache-Control"] = "max-age=86400"
        return response

    @app.get("/health")
    def health():
        return jsonify({"status": "ok"})

    @app.context_processor
    def common():
        bs = getattr(g, "bs", None)
        return {"bs": bs, "me": bs.user if bs else None, "csrf_token": bs.csrf_token if bs else "",
                "settings": settings, "charts": plotly_path() is not None}

    views_auth.register(app)
    views_tasks.register(app)
    views_datasets.register(app)
    api.register(app)

    @app.get("/")
    def index():
        return redirect(url_for("tasks"))

    return app


def cookie_name() -> str:
    """One cookie per dashboard port: browsers share cookies between the ports of one host."""
    return f"werkbund_dashboard_{request.environ.get('SERVER_PORT', '0')}"


def page_error(message: str, status: int):
    return render_template("error.html", message=message, status=status), status


def plotly_path() -> Path | None:
    try:
        import plotly
    except ImportError:
        return None
    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    return path if path.is_file() else None
