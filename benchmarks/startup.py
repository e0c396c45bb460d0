"""Start-up time of the command line: how long `--help` and a config error take to answer, wall clock.

    python benchmarks/startup.py                    # `make bench`: 5 runs of each, best and median
    python benchmarks/startup.py --runs 10 --out experiments/results/benchmarks/startup.json

Each command is a fresh `python -m lit_inheritune ...` process, as a user types it. The bar (issue #12) is 3 s
for both; what is imported before the config is known to be good decides it (torch alone takes seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lit_inheritune.provenance import provenance

COMMANDS = {
    "--help": ["--help"],
    "config error (train.max_steps=abc)": ["train.max_steps=abc"],
    "check error (method.parts=atn)": ["method=inheritune", "method.parts=atn"],
    "check error (method=stacking method.n_layer=3)": ["method=stacking", "method.n_layer=3"],
    "another method's key (experiment=cpu_medium_16l method=kd)": ["experiment=cpu_medium_16l", "method=kd"],
}


def wall_seconds(args: list[str], cwd: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lit_inheritune", *args], cwd=cwd, env=env, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as cwd:  # nothing is written, but never into the checkout
        wall_seconds(["--help"], cwd)  # warm the file cache once
        for name, command in COMMANDS.items():
            times = [wall_seconds(command, cwd) for _ in range(args.runs)]
            results[name] = {"best_s": round(min(times), 2), "median_s": round(statistics.median(times), 2),
                             "runs": args.runs}
            print(f"{name:60s} best {min(times):5.2f} s, median {statistics.median(times):5.2f} s")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"provenance": provenance(), "load_average_1min": load, "startup": results}
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
