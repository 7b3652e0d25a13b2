"""Event receivers run as separate processes: an SSE client and a raw Redis subscriber.

    python -m bench.listener sse --url http://127.0.0.1:8000/v1/executions/<id>/events
    python -m bench.listener redis --url redis://127.0.0.1:6379/11 --channel <name>

Each prints READY once it is connected, then one line `<event id> <receive time>` per
event (time.time(), the same clock as the sender on this host), and exits when the
stream ends (SSE) or when the message `END` arrives (Redis).
"""

from __future__ import annotations

import argparse
import http.client
import sys
import time
import urllib.parse


def sse(url: str, headers: dict[str, str]) -> None:
    """Read an SSE stream; print each event's id with the time its blank line arrived."""
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
    conn.request(
        "GET",
        parsed.path + (f"?{parsed.query}" if parsed.query else ""),
        headers={"Accept": "text/event-stream"} | headers,
    )
    resp = conn.getresponse()
    if resp.status != 200:
        print(f"ERROR {resp.status} {resp.read()[:300]!r}", flush=True)
        return
    print("READY", flush=True)
    event_id = None
    while True:
        line = resp.fp.readline()
        if not line:
            break
        now = time.time()
        text = line.decode().rstrip("\r\n")
        if text.startswith("id:"):
            event_id = text[3:].strip()
        elif text == "" and event_id is not None:
            print(f"{event_id} {now:.6f}", flush=True)
            event_id = None
    print("END", flush=True)


def redis_subscriber(url: str, channel: str) -> None:
    """Subscribe to `channel`; print each message's sequence number and receive time."""
    import redis

    client = redis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    while pubsub.get_message(timeout=0.1) is None and not pubsub.subscribed:
        pass
    print("READY", flush=True)
    for message in pubsub.listen():
        if message.get("type") != "message":
            continue
        now = time.time()
        data = message["data"].decode()
        if data == "END":
            break
        print(f"{data.split()[0]} {now:.6f}", flush=True)
    print("END", flush=True)


def main() -> None:
    """Run the receiver named on the command line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=["sse", "redis"])
    ap.add_argument("--url", required=True)
    ap.add_argument("--channel")
    ap.add_argument("--header", action="append", default=[])
    args = ap.parse_args()
    if args.kind == "sse":
        headers = dict((k.strip(), v.strip()) for k, _, v in (h.partition(":") for h in args.header))
        sse(args.url, headers)
    else:
        redis_subscriber(args.url, args.channel)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
