"""CLI start-up: wall seconds of ``mixquant --help``, ``mixquant sweep --help`` and ``mixquant results
list`` (an empty store under a temporary MIXQUANT_HOME) beside bare ``python -c pass``, each the
median of --runs fresh subprocesses, interleaved so that the machine's load falls on all alike.

``mixquant`` is run as ``python -m mixquant_cli`` from the repository root (the package here,
whatever the installed console script points to); the script imports the same modules.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIXQUANT = [sys.executable, "-m", "mixquant_cli"]
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "mixquant --help": MIXQUANT + ["--help"],
    "mixquant sweep --help": MIXQUANT + ["sweep", "--help"],
    "mixquant results list": MIXQUANT + ["results", "list"],
}


def wall_seconds(argv, env) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def medians(runs: int, env) -> dict:
    """Median wall seconds per command, the commands interleaved run by run (one warm-up run first)."""
    times = {name: [] for name in COMMANDS}
    for run in range(runs + 1):
        for name, argv in COMMANDS.items():
            seconds = wall_seconds(argv, env)
            if run:  # the first round fills the OS file cache
                times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs of each command (default 15)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mixquant-home-") as home:
        env = {**os.environ, "MIXQUANT_HOME": home}
        result = medians(args.runs, env)
    bare = result["python -c pass"]
    print(f"start-up, median of {args.runs} runs each (interleaved subprocesses), Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'command':26s} {'seconds':>8s} {'x bare python':>14s}")
    for name, seconds in result.items():
        print(f"{name:26s} {seconds:8.3f} {seconds / bare:14.1f}")


if __name__ == "__main__":
    main()
