"""HTTP load generator, run as a separate process: many keep-alive connections, one thread each.

    python -m bench.loadgen --url http://127.0.0.1:8000/v1/executions --body '{...}' \
        --connections 64 --duration 10 --warmup 2

Prints one JSON object: requests and errors in the measured window, requests per
second, latency percentiles, status counts and the CPU this process used (so a
saturated load generator is visible). Written in Python (http.client) so that
`make bench` needs nothing beyond the virtualenv.
"""

from __future__ import annotations

import argparse
import http.client
import json
import resource
import threading
import time
import urllib.parse
from collections import Counter


def _worker(
    url: urllib.parse.SplitResult,
    method: str,
    body: bytes | None,
    headers: dict[str, str],
    start: float,
    measure_from: float,
    stop: float,
    out: list[tuple[float, float, int]],
) -> None:
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    path = url.path + (f"?{url.query}" if url.query else "")
    while time.monotonic() < start:
        time.sleep(0.001)
    while True:
        t0 = time.monotonic()
        if t0 >= stop:
            break
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            status = resp.status
            if resp.getheader("connection", "").lower() == "close":
                conn.close()
        except (OSError, http.client.HTTPException):
            status = 0
            conn.close()
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        t1 = time.monotonic()
        if t0 >= measure_from and t1 <= stop:
            out.append((t0, t1 - t0, status))
    conn.close()


def run(
    url: str,
    method: str,
    body: bytes | None,
    connections: int,
    duration: float,
    warmup: float,
    headers: dict[str, str],
) -> dict[str, object]:
    """Drive `url` from `connections` threads; statistics of the window after the warm-up."""
    parsed = urllib.parse.urlsplit(url)
    start = time.monotonic() + 0.2
    measure_from = start + warmup
    stop = measure_from + duration
    results: list[list[tuple[float, float, int]]] = [[] for _ in range(connections)]
    threads = [
        threading.Thread(
            target=_worker,
            args=(parsed, method, body, headers, start, measure_from, stop, results[i]),
            daemon=True,
        )
        for i in range(connections)
    ]
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + warmup + 60)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    samples = [s for r in results for s in r]
    ok = [s for s in samples if 200 <= s[2] < 300]
    latencies = sorted(s[1] * 1000 for s in ok)

    def pct(p: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))]

    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {
        "requests": len(samples),
        "ok": len(ok),
        "errors": len(samples) - len(ok),
        "rps": len(ok) / duration,
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "status": dict(Counter(str(s[2]) for s in samples)),
        "loadgen_cpu_fraction": cpu / (duration + warmup),
        "connections": connections,
        "duration": duration,
    }


def main() -> None:
    """Parse arguments, run, print the JSON result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--method", default="POST")
    ap.add_argument("--body", default=None)
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    args = ap.parse_args()
    headers = {"Content-Type": "application/json", "Connection": "keep-alive"}
    for h in args.header:
        k, _, v = h.partition(":")
        headers[k.strip()] = v.strip()
    body = args.body.encode() if args.body is not None else None
    print(json.dumps(run(args.url, args.method, body, args.connections, args.duration, args.warmup, headers)))


if __name__ == "__main__":
    main()
