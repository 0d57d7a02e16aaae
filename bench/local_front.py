"""The local platform's CPU per request, from the server's side: what each HTTP request costs it.

    .venv/bin/python bench/local_front.py                      # 1,500 requests each, 4 client threads
    .venv/bin/python bench/local_front.py --requests 3000 --threads 8

A ``werkbund local-platform`` process on a fresh SQLite file; one user registers and logs in; client threads,
each on its own kept-alive connection, send ``GET /api/v1/health`` (the HTTP server, the ASGI front and
Flask; no database) and then ``POST /api/v1/call/whoami`` (the same, with the session token checked and the
user read: two queries). Printed for each: the server's CPU (user and system, all its threads, from
``/proc``) per request, and requests per second. A round of the overhead job (``bench/vs_flower.py``) takes
about three requests per participant on the local platform, so this is the part of its round that grows
with the number of requests. Linux only (``/proc``).
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

WERKBUND = str(Path(sys.executable).with_name("werkbund"))


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    home, port = tempfile.mkdtemp(prefix="werkbund-front-"), _free_port()
    proc = subprocess.Popen([WERKBUND, "local-platform", "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "WERKBUND_HOME": home})
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"{api}/health", timeout=1)
                break
            except requests.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the local platform did not start")
                time.sleep(0.1)
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
            cpu, start = _cpu_s(proc.pid), time.perf_counter()
            threads = [threading.Thread(target=client) for _ in range(args.threads)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            cpu, wall, total = _cpu_s(proc.pid) - cpu, time.perf_counter() - start, each * args.threads
            print(f"{label:46s} server CPU {1000 * cpu / total:5.2f} ms a request, {total / wall:6.0f} requests/s "
                  f"({total} requests, {args.threads} threads)")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
