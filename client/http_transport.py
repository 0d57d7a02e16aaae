"""HTTP transport to the local platform (requests, one keep-alive session)."""
from __future__ import annotations

import json
import time

import requests

from werkbund.client.transport import Transport
from werkbund.platform.errors import AuthenticationFailed, Unavailable, WerkbundError, error_from_dict

POLL_SECONDS = 25.0


class HttpTransport(Transport):
    def __init__(self, url: str, token: str | None = None, user: str | None = None):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.token = token
        self.user = user

    # ------------------------------------------------------------ plumbing
    def _request(self, method: str, path: str, *, json_body=None, data=None, params=None,
                 headers=None, timeout: float = 60.0, auth: bool = True) -> requests.Response:
        all_headers = dict(headers or {})
        if auth:
            if not self.token:
                raise AuthenticationFailed("not logged in")
            all_headers["Authorization"] = f"Bearer {self.token}"
        try:
            response = self.session.request(method, f"{self.url}/api/v1{path}", json=json_body, data=data,
                                            params=params, headers=all_headers, timeout=timeout)
        except requests.ConnectionError:
            raise Unavailable(f"cannot reach the local platform at {self.url}; is `werkbund local-platform` running?") from None
        except requests.Timeout:
            raise Unavailable(f"the local platform at {self.url} did not answer in {timeout:.0f} s") from None
        if response.status_code >= 400:
            raise _error_of(response)
        return response

    def _json(self, response: requests.Response):
        try:
            return response.json()["data"]
        except (ValueError, KeyError):
            raise WerkbundError(f"unexpected reply from {self.url}: {response.text[:200]!r}") from None

    # ------------------------------------------------------------ control
    def register(self, user, password, org):
        return self._json(self._request("POST", "/register", auth=False,
                                        json_body={"user": user, "password": password, "org": org}))

    def login(self, user, password):
        data = self._json(self._request("POST", "/login", auth=False, json_body={"user": user, "password": password}))
        self.token, self.user = data["token"], data["user"]
        return data

    def call(self, command, **params):
        return self._json(self._request("POST", f"/call/{command}", json_body=params))

    # ------------------------------------------------------------ messages
    def send(self, task, to, body):
        return self._json(self._request("POST", f"/tasks/{task}/messages", params={"to": to}, data=body,
                                        headers={"Content-Type": "application/octet-stream"}, timeout=600))

    def receive(self, task, timeout):
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            wait = max(0.0, min(POLL_SECONDS, deadline - time.monotonic()))
            response = self._request("GET", f"/tasks/{task}/messages", params={"timeout": f"{wait:.3f}"},
                                     timeout=wait + 60)
            if response.status_code == 200:
                return response.headers.get("X-Werkbund-Sender", ""), response.content
            if time.monotonic() >= deadline:
                return None

    # ------------------------------------------------------------ models
    def put_model(self, task, data, meta):
        return self._json(self._request("PUT", f"/tasks/{task}/model", data=data, timeout=600,
                                        headers={"X-Werkbund-Meta": json.dumps(meta),
                                                 "Content-Type": "application/octet-stream"}))

    def get_model(self, task):
        response = self._request("GET", f"/tasks/{task}/model", timeout=600)
        return response.content, json.loads(response.headers.get("X-Werkbund-Meta", "{}"))

    def close(self):
        self.session.close()


def _error_of(response: requests.Response) -> WerkbundError:
    try:
        return error_from_dict(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return WerkbundError(f"HTTP {response.status_code} from the platform: {response.text[:200]}")
