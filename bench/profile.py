"""Summarise py-spy folded stacks: `python -m bench.profile FILE [--top N] [--filter TEXT]`.

Prints the functions with the largest inclusive share of samples (idle waits excluded
unless --idle), which is how the hot path of a worker or gunicorn is read.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

IDLE = re.compile(
    r"\((threading|selectors|queue|socket|ssl)\.py\)|wait \(|select \(|poll \(|"
    r"_recv_into|recv_into|readinto|epoll|accept \(|sleep"
)


def main() -> None:
    """Read folded stacks, print the top inclusive functions."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--filter", default="", help="only stacks containing this text")
    ap.add_argument("--idle", action="store_true", help="keep stacks that end in a wait")
    ap.add_argument(
        "--by-package",
        action="store_true",
        help="self time by package of the innermost frame (sqlalchemy, psycopg, app, ...)",
    )
    args = ap.parse_args()
    inclusive: Counter[str] = Counter()
    total = 0
    with open(args.file) as fh:
        lines = fh.readlines()
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not count.isdigit() or (args.filter and args.filter not in stack):
            continue
        frames = stack.split(";")
        if not args.idle and frames and IDLE.search(frames[-1]):
            continue
        n = int(count)
        total += n
        if args.by_package:
            inclusive[_package(frames[-1])] += n
            continue
        for f in set(frames):
            inclusive[f] += n
    print(f"{total} busy samples")
    for frame, n in inclusive.most_common(args.top):
        print(f"{100 * n / max(total, 1):5.1f}%  {frame[:150]}")


def _package(frame: str) -> str:
    """'name (sqlalchemy/orm/session.py:12)' -> 'sqlalchemy'; stdlib files -> 'stdlib:<file>'."""
    m = re.search(r"\(([^:)]+)", frame)
    if not m:
        return frame
    path = m.group(1)
    return path.split("/")[0] if "/" in path else f"stdlib:{path}"


if __name__ == "__main__":
    main()
