"""Print the latest run of a mode from bench/results.jsonl as a Markdown table.

python -m bench.table [--mode full] [--command "make bench-full"] [--machine "..."]
"""

from __future__ import annotations

import argparse
import json
import math

from bench.results import RESULTS


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"


def latest(mode: str) -> list[dict[str, object]]:
    """The lines of the most recent run (same commit, consecutive) of `mode`."""
    lines = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    lines = [r for r in lines if r["mode"] == mode]
    if not lines:
        return []
    run: list[dict[str, object]] = []
    for r in reversed(lines):
        if run and (r["commit"] != run[-1]["commit"] or r["figure"] in {x["figure"] for x in run}):
            break
        run.append(r)
    return list(reversed(run))


def main() -> None:
    """Print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default="full")
    ap.add_argument("--command", default=None)
    ap.add_argument("--machine", default="")
    args = ap.parse_args()
    command = args.command or ("make bench-full" if args.mode == "full" else "make bench")
    rows = latest(args.mode)
    if not rows:
        raise SystemExit(f"no {args.mode} results in {RESULTS}")
    print(f"Run of {rows[0]['at']} (commit {rows[0]['commit']}), `{command}`; machine: {args.machine}\n")
    print("| figure | value | baseline | ratio | goal | met |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        met = {True: "yes", False: "**no**", None: ""}[r["met"]]  # type: ignore[index]
        print(
            f"| {r['figure']} | {_fmt(r['value'])} {r['unit']} | {_fmt(r['baseline'])} "  # type: ignore[arg-type]
            f"| {_fmt(r['ratio'])} | {r['goal'] or '—'} | {met} |"
        )  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
