"""`python -m bench --mode short|full [--only name ...]`: run the benchmarks, print, record.

Creates its own database and queues, starts its own redis-server, workers and gunicorn,
and stops and drops all of them at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback
from types import FrameType

from bench import env as bench_env

FIGURES = (
    "roundtrips",
    "throughput",
    "latency",
    "inflight",
    "http",
    "sse",
    "listing",
    "flowcontrol",
    "deltas",
    "watchers",
)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks; 0 when every one ran (goals may still be missed)."""
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["short", "full"], default="short")
    ap.add_argument("--only", nargs="*", choices=FIGURES, default=None)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    selected = args.only or list(FIGURES)
    if bench_env.profiling() and bench_env.py_spy() is None:
        print(bench_env.PY_SPY_MISSING, file=sys.stderr)
        return 2

    env = bench_env.BenchEnv()
    started = time.monotonic()
    failures: list[str] = []
    try:
        env.start_redis()
        bench_env.configure()
        from bench.common import SIZES, Ctx
        from bench.results import Report, machine

        report = Report(args.mode)
        print(f"agentexec benchmarks, mode {args.mode}, commit {report.commit}")
        print(f"machine: {machine()}")
        print(f"database {bench_env.DB_NAME}, redis {bench_env.redis_url()}, logs {bench_env.LOG_DIR}\n")
        env.create_database()
        ctx = Ctx(env=env, report=report, mode=args.mode, sizes=SIZES[args.mode])
        for name in selected:
            section = time.monotonic()
            print(f"[{name}]", flush=True)
            try:
                _run(name, ctx)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                failures.append(name)
                print(f"  {name} FAILED: {exc}", flush=True)
                traceback.print_exc()
            print(f"  ({time.monotonic() - section:.0f} s)\n", flush=True)
        print(report.summary())
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        failures.append("interrupted")
        return 130
    except Exception:
        failures.append("setup")
        raise
    finally:
        env.close(keep_logs=bool(failures))
        print(f"total {time.monotonic() - started:.0f} s", flush=True)
    if failures:
        print(f"benchmarks that did not run to the end: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def _run(name: str, ctx: object) -> None:
    from bench.common import Ctx

    assert isinstance(ctx, Ctx)
    if name in ("throughput", "latency"):
        _ensure_default_workers(ctx)
    elif "raw_worker" in ctx.state:
        ctx.env.stop(ctx.state.pop("raw_worker"))
        ctx.env.stop(ctx.state.pop("our_worker"))
    module = __import__(f"bench.figures.{name}", fromlist=["run"])
    module.run(ctx)


def _ensure_default_workers(ctx: object) -> None:
    from bench.common import Ctx

    assert isinstance(ctx, Ctx)
    if "raw_worker" not in ctx.state:
        ctx.state["raw_worker"] = ctx.env.start_worker(
            "raw", app="bench.raw_celery", queue=bench_env.RAW_QUEUE
        )
        ctx.state["our_worker"] = ctx.env.start_worker("ours")


if __name__ == "__main__":
    sys.exit(main())
