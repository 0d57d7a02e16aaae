"""The local platform's CPU per request, from the server's side: what each HTTP request costs it.

    .venv/bin/python bench/local_front.py                      # 1,500 requests each, 4 client threads
    .venv/bin/python bench/local_front.py --requests 3000 --threads 8

A ``werkbund local-platform`` process on a fresh SQLite file (started as ``bench/vs_flower.py`` starts it);
one user registers and logs in; client threads, each on its own kept-alive connection, send
``GET /api/v1/health`` (the HTTP server, the ASGI front and Flask; no database) and then
``POST /api/v1/call/whoami`` (the same, with the session token checked and the user read: two queries).
Printed for each: the server's CPU (user and system, all its threads, from
``/proc``) per request, and requests per second. A round of the overhead job (``bench/vs_flower.py``) takes
about three requests per participant on the local platform, so this is the part of its round that grows
with the number of requests. Linux only (``/proc``).
"""
from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import requests

from vs_flower import _cpu_s, local_platform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    with local_platform(Path(tempfile.mkdtemp(prefix="werkbund-front-"))) as (where, pid):
        api = f"{where['url']}/api/v1"
        requests.post(f"{api}/register", json={"user": "alice", "password": "alice-password", "org": "acme"})
        token = requests.post(f"{api}/login", json={"user": "alice", "password": "alice-password"}).json()["data"]["token"]
        auth = {"Authorization": f"Bearer {token}"}
        jobs = {"GET /health (no database)": lambda s: s.get(f"{api}/health"),
                "POST /call/whoami (token checked, user read)": lambda s: s.post(f"{api}/call/whoami", json={},
                                                                                 headers=auth)}
        for label, request in jobs.items():
            each = max(1, args.requests // args.threads)

            def client():
                with requests.Session() as session:
                    for _ in range(each):
                        response = request(session)
                        assert response.status_code == 200, response.text

            client()  # warm: the first connection, the compiled queries
            cpu, start = _cpu_s(pid), time.perf_counter()
            threads = [threading.Thread(target=client) for _ in range(args.threads)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            cpu, wall, total = _cpu_s(pid) - cpu, time.perf_counter() - start, each * args.threads
            print(f"{label:46s} server CPU {1000 * cpu / total:5.2f} ms a request, {total / wall:6.0f} requests/s "
                  f"({total} requests, {args.threads} threads)")


if __name__ == "__main__":
    main()
