"""Figures: how one measured value is printed and appended to bench/results.jsonl."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results.jsonl"


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation; nan for no values."""
    if not values:
        return math.nan
    data = sorted(values)
    k = (len(data) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def median(values: list[float]) -> float:
    """The 50th percentile."""
    return percentile(values, 50)


def git_commit() -> str:
    """The short commit of the tree being measured, '+dirty' when files are modified."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    """A one-line description of the host: CPUs, memory, load, Python, PostgreSQL."""
    cpus = os.cpu_count() or 0
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{cpus} vCPU {model}, {mem_gb:.0f} GB RAM, load {load}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


@dataclass
class Figure:
    """One measured value with its baseline, ratio and goal."""

    figure: str
    value: float
    unit: str
    baseline: float | None = None
    goal: str | None = None
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline or math.isnan(self.baseline):
            return None
        return self.value / self.baseline

    def line(self) -> str:
        """The human-readable line printed by the benchmark."""
        base = "—" if self.baseline is None else _fmt(self.baseline)
        ratio = "—" if self.ratio is None else f"{self.ratio:.2f}"
        met = {True: "MET", False: "NOT MET", None: ""}[self.met]
        goal = self.goal or "—"
        text = (
            f"  {self.figure:<50} {_fmt(self.value):>8} {self.unit:<6} baseline {base:>8}  "
            f"ratio {ratio:>5}  goal {goal:<22} {met}"
        )
        return text + (f"\n      {self.note}" if self.note else "")

    def record(self, mode: str, commit: str) -> dict[str, Any]:
        """The JSON line of this figure."""
        return {
            "figure": self.figure,
            "value": _round(self.value),
            "unit": self.unit,
            "baseline": None if self.baseline is None else _round(self.baseline),
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "goal": self.goal,
            "met": self.met,
            "mode": mode,
            "commit": commit,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }


def _round(x: float) -> float:
    return round(x, 3) if not math.isnan(x) else x


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


class Report:
    """Collects figures, prints each as it comes and appends it to results.jsonl."""

    def __init__(self, mode: str, path: Path = RESULTS):
        self.mode = mode
        self.path = path
        self.commit = git_commit()
        self.figures: list[Figure] = []

    def add(self, fig: Figure) -> Figure:
        """Print and record one figure."""
        self.figures.append(fig)
        print(fig.line(), flush=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(fig.record(self.mode, self.commit)) + "\n")
        return fig

    def summary(self) -> str:
        """A closing table of every figure of this run."""
        met = sum(1 for f in self.figures if f.met is True)
        missed = [f.figure for f in self.figures if f.met is False]
        lines = ["", f"summary ({self.mode}, commit {self.commit}): {met} goals met, {len(missed)} not met"]
        lines += [f"  not met: {name}" for name in missed]
        return "\n".join(lines)
