"""The dashboard's security and plumbing, over HTTP without a browser: session cookies, CSRF,
loopback-only unless TLS, the Host header, escaping, the platform deciding every action, datasets
kept per user, the OpenAPI spec, plotly served from its package, the algorithms' declared options."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import requests

from conftest import PASSWORDS, WERKBUND, quiet_env
from support.tls_support import self_signed

pytest.importorskip("spectree")
pytest.importorskip("pydantic")

from werkbund.dashboard import DashboardServer, DashboardSettings  # noqa: E402
from werkbund.platform.errors import InvalidInput  # noqa: E402

TOKEN = re.compile(r'name="csrf-token" content="([^"]+)"')


@pytest.fixture
def board(tmp_path, monkeypatch):
    """A local platform and a dashboard for it, both in this process."""
    import werkbund

    monkeypatch.setenv("WERKBUND_HOME", str(tmp_path / "home"))
    platform = werkbund.start_local_platform(tmp_path / "platform")
    server = DashboardServer(DashboardSettings(platform="local", url=platform.url, data_root=tmp_path / "data"),
                             port=0).start()
    (tmp_path / "data").mkdir()
    yield server
    server.stop()
    platform.stop()


def browser_session(board) -> tuple[requests.Session, str]:
    """A requests session that fetched the login page: (session, its CSRF token)."""
    http = requests.Session()
    page = http.get(f"{board.url}/login")
    return http, TOKEN.search(page.text).group(1)


def registered(board, user: str, org: str | None = None) -> tuple[requests.Session, str]:
    http, token = browser_session(board)
    answer = http.post(f"{board.url}/register", data={"csrf_token": token, "user": user, "org": org or f"{user} AG",
                                                      "password": PASSWORDS[user], "password2": PASSWORDS[user]},
                       allow_redirects=False)
    assert answer.status_code == 302, answer.text
    return http, TOKEN.search(http.get(f"{board.url}/tasks").text).group(1)


def test_the_session_cookie_is_httponly_samesite_strict_and_renewed_at_login(board):
    http, token = browser_session(board)
    cookie = next(c for c in http.cookies if c.name.startswith("werkbund_dashboard_"))
    header = requests.get(f"{board.url}/login").headers["Set-Cookie"]
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Secure" not in header
    before = cookie.value
    http.post(f"{board.url}/register", data={"csrf_token": token, "user": "alice", "org": "Acme",
                                             "password": PASSWORDS["alice"], "password2": PASSWORDS["alice"]})
    after = next(c for c in http.cookies if c.name.startswith("werkbund_dashboard_")).value
    assert after != before  # a new session id once logged in
    stale = requests.get(f"{board.url}/tasks", cookies={cookie.name: before}, allow_redirects=False)
    assert stale.status_code == 302 and "/login" in stale.headers["Location"]


def test_every_post_needs_this_sessions_csrf_token(board):
    http, token = browser_session(board)
    other, other_token = browser_session(board)
    form = {"user": "alice", "org": "Acme", "password": PASSWORDS["alice"], "password2": PASSWORDS["alice"]}
    for bad in ({}, {"csrf_token": "forged"}, {"csrf_token": other_token}):
        answer = http.post(f"{board.url}/register", data={**form, **bad}, allow_redirects=False)
        assert answer.status_code == 400 and "expired" in answer.text
    assert http.post(f"{board.url}/register", data={**form, "csrf_token": token},
                     allow_redirects=False).status_code == 302
    token = TOKEN.search(http.get(f"{board.url}/tasks").text).group(1)
    assert http.post(f"{board.url}/logout", allow_redirects=False).status_code == 400  # no token: still logged in
    assert http.get(f"{board.url}/tasks", allow_redirects=False).status_code == 200
    assert http.post(f"{board.url}/logout", headers={"X-CSRF-Token": token}, allow_redirects=False).status_code == 302
    assert http.get(f"{board.url}/tasks", allow_redirects=False).status_code == 302


def test_logging_out_of_the_dashboard_revokes_the_platform_session(board):
    from werkbund.client import home_files

    http, token = browser_session(board)
    http.post(f"{board.url}/register", data={"csrf_token": token, "user": "alice", "org": "Acme",
                                             "password": PASSWORDS["alice"], "password2": PASSWORDS["alice"]})
    platform_url = board.settings.url
    platform_token = home_files.load_token(platform_url, "alice")
    whoami = f"{platform_url}/api/v1/call/whoami"
    assert requests.post(whoami, json={}, headers={"Authorization": f"Bearer {platform_token}"}).status_code == 200
    token = TOKEN.search(http.get(f"{board.url}/tasks").text).group(1)
    assert http.post(f"{board.url}/logout", headers={"X-CSRF-Token": token}, allow_redirects=False).status_code == 302
    answer = requests.post(whoami, json={}, headers={"Authorization": f"Bearer {platform_token}"})
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "authentication_failed"
    assert home_files.load_token(platform_url, "alice") is None


def test_pages_and_json_need_a_login(board):
    assert requests.get(f"{board.url}/api/tasks").status_code == 401
    assert requests.get(f"{board.url}/api/tasks").json()["error"]["code"] == "authentication_failed"
    page = requests.get(f"{board.url}/datasets", allow_redirects=False)
    assert page.status_code == 302 and page.headers["Location"].endswith("/login?next=/datasets")


def test_a_foreign_host_header_is_refused(board):
    answer = requests.get(f"{board.url}/login", headers={"Host": f"evil.example:{board.port}"})
    assert answer.status_code == 400


def test_security_headers_allow_no_outside_script(board):
    headers = requests.get(f"{board.url}/login").headers
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"


def test_strings_from_the_platform_are_escaped(board):
    http, token = registered(board, "alice", org="<img src=x onerror=alert(1)>")
    answer = http.post(f"{board.url}/tasks/new", data={
        "csrf_token": token, "name": "weld-1", "algorithm": "kmeans", "quorum": "1", "rounds": "1", "pom": "1",
        "description": "</p><script>alert(2)</script>"}, allow_redirects=False)
    assert answer.status_code == 302, answer.text
    listing = http.get(f"{board.url}/tasks").text
    assert "<img src=x" not in listing and "&lt;img src=x onerror=alert(1)&gt;" in listing
    detail = http.get(f"{board.url}/tasks/weld-1").text
    assert "<script>alert(2)" not in detail and "&lt;script&gt;alert(2)" in detail


def test_form_errors_are_named_beside_their_fields(board):
    http, token = registered(board, "alice")
    form = {"csrf_token": token, "name": "weld-1", "algorithm": "neural_network", "quorum": "0", "rounds": "2",
            "pom": "1", "opt-neural_network-epochs": "0"}
    page = http.post(f"{board.url}/tasks/new", data=form)
    assert page.status_code == 400
    assert re.search(r'id="quorum-error">[^<]*at least 1', page.text)
    assert re.search(r'id="opt-neural_network-epochs-error">[^<]*\[1, 10000\]', page.text)
    page = http.post(f"{board.url}/tasks/new", data={**form, "quorum": "1", "opt-neural_network-epochs": "1",
                                                     "pom": "2"})
    assert re.search(r'id="pom-error">[^<]*quorum of at least 2', page.text), page.text  # the platform's rule
    page = http.post(f"{board.url}/tasks/new", data={"csrf_token": token, "name": "k", "algorithm": "kmeans",
                                                     "quorum": "2", "rounds": "1", "pom": "1", "dp": "on",
                                                     "dp_epsilon": "3"})
    assert re.search(r'id="dp-error">[^<]*no differential privacy', page.text)
    assert http.post(f"{board.url}/tasks/new", data={**form, "quorum": "2", "opt-neural_network-epochs": ""},
                     allow_redirects=False).status_code == 302
    page = http.post(f"{board.url}/tasks/new", data={**form, "quorum": "2", "opt-neural_network-epochs": ""})
    assert re.search(r'id="name-error">[^<]*already exists', page.text)


def test_the_platform_decides_every_action(board):
    alice, alice_token = registered(board, "alice")
    alice.post(f"{board.url}/tasks/new", data={"csrf_token": alice_token, "name": "weld-1", "algorithm": "kmeans",
                                               "quorum": "1", "rounds": "1", "pom": "1"})
    bob, bob_token = registered(board, "bob")
    page = bob.post(f"{board.url}/tasks/weld-1/delete", data={"csrf_token": bob_token})
    assert "only its creator" in page.text or "creator" in page.text
    assert "weld-1" in [t["name"] for t in alice.get(f"{board.url}/api/tasks").json()["tasks"]]
    assert bob.get(f"{board.url}/api/tasks/weld-1/state").json()["members"] == []  # not a member: no members
    page = bob.post(f"{board.url}/tasks/weld-1/aggregate", data={"csrf_token": bob_token})
    assert "Could not start the aggregator" in page.text
    model = bob.get(f"{board.url}/tasks/weld-1/model")
    assert model.status_code in (403, 404, 409)


def test_datasets_are_kept_per_user_as_paths_and_schemas(board, tmp_path):
    from sklearn.datasets import load_digits

    csv = tmp_path / "data" / "plant.csv"
    load_digits(as_frame=True).frame.head(60).to_csv(csv, index=False)
    alice, token = registered(board, "alice")
    outside = alice.post(f"{board.url}/datasets", data={"csrf_token": token, "name": "x", "path": "/etc/hostname",
                                                        "kind": "classification", "missing": "drop"})
    assert re.search(r'id="path-error">[^<]*only under', outside.text)
    answer = alice.post(f"{board.url}/datasets", data={"csrf_token": token, "name": "plant-a", "path": str(csv),
                                                       "target": "target", "kind": "classification",
                                                       "missing": "drop"}, allow_redirects=False)
    assert answer.status_code == 302
    [entry] = alice.get(f"{board.url}/api/datasets").json()["datasets"]
    assert entry["path"] == str(csv) and entry["data_schema"]["n_samples"] == 60
    stored = list((tmp_path / "home" / "dashboard" / "datasets").rglob("alice.json"))
    assert len(stored) == 1 and "0.0," not in stored[0].read_text()  # the schema, no rows
    assert oct(stored[0].stat().st_mode & 0o777) == "0o600"
    bob, _ = registered(board, "bob")
    assert bob.get(f"{board.url}/api/datasets").json() == {"datasets": []}
    assert bob.get(f"{board.url}/datasets/plant-a").status_code == 404


def test_the_openapi_spec_describes_the_json_endpoints(board):
    spec = requests.get(f"{board.url}/api/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert {"/api/tasks", "/api/tasks/{name}/state", "/api/tasks/{name}/clusters", "/api/datasets"} <= set(spec["paths"])
    parameters = {p["name"] for p in spec["paths"]["/api/tasks"]["get"]["parameters"]}
    assert {"search", "status", "pom", "algorithm", "scope"} <= parameters
    http, _ = registered(board, "alice")
    assert http.get(f"{board.url}/api/tasks", params={"status": "NOPE"}).status_code == 422


def test_plotly_comes_from_its_installed_package_never_a_cdn(board):
    plotly = pytest.importorskip("plotly")
    served = requests.get(f"{board.url}/assets/plotly.min.js")
    assert served.status_code == 200
    assert served.content == (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()
    shipped = Path(__file__).resolve().parents[2] / "dashboard"
    for path in [*shipped.glob("templates/*.html"), *shipped.glob("static/*")]:
        assert not re.search(r"(src|href)=\"(https?:)?//", path.read_text()), f"{path.name} loads from outside"
    assert not list(shipped.rglob("plotly*.js")), "plotly.js is served from the package, not copied"


@pytest.mark.slow
def test_a_non_loopback_address_needs_tls(tmp_path):
    settings = DashboardSettings(platform="local", url="http://127.0.0.1:1")
    with pytest.raises(InvalidInput, match="only over TLS"):
        DashboardServer(settings, host="0.0.0.0", port=0)
    result = subprocess.run([WERKBUND, "dashboard", "--url", "http://127.0.0.1:1", "--host", "0.0.0.0", "--port",
                             "0"], env=quiet_env(WERKBUND_HOME=str(tmp_path)), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1 and "only over TLS" in result.stderr and "Traceback" not in result.stderr


def test_over_tls_the_cookie_is_secure(tmp_path):
    cert, key = self_signed(tmp_path)
    server = DashboardServer(DashboardSettings(platform="local", url="http://127.0.0.1:1"), port=0,
                             tls_certificate=cert, tls_key=key).start()
    try:
        assert server.url.startswith("https://")
        answer = requests.get(f"{server.url}/login", verify=cert)
        assert answer.status_code == 200 and "Secure" in answer.headers["Set-Cookie"]
    finally:
        server.stop()


def test_the_options_come_from_the_declaration_else_a_generic_set():
    from werkbund.algorithms.registry import get_algorithm
    from werkbund.dashboard.forms import GENERIC_OPTIONS, option_fields

    kmeans = {o.name: o for o in option_fields(get_algorithm("kmeans"))}
    assert kmeans["clusters"].input == "number" and kmeans["clusters"].minimum == 1
    network = {o.name for o in option_fields(get_algorithm("neural_network"))}
    assert {"epochs", "batch_size", "learning_rate"} <= network and "dp" not in network  # DP has its own section

    class Undeclared:
        name = "old_style"

    assert option_fields(Undeclared()) == list(GENERIC_OPTIONS)
