"""Where a result came from: the command, the commit, the machine. Written beside every result file."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path


def git_commit(cwd: Path | None = None) -> str:
    """HEAD's hash, with '+dirty' when the work tree has uncommitted changes to tracked files other than
    experiments/results/ (what the code writes there does not change the code that wrote it)."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                ":(top,exclude)experiments/results"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+dirty" if dirty else "")


def hardware() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def _command_line() -> str:
    """This process's command line, as a person would type it (`python -m pkg.mod` for package modules)."""
    argv = list(sys.argv)
    script = Path(argv[0]).resolve() if argv and argv[0] else None
    package = Path(__file__).resolve().parent
    if script and script.suffix == ".py" and package in script.parents:
        module = ".".join(script.relative_to(package.parent).with_suffix("").parts)
        argv = ["-m", module.removesuffix(".__main__"), *argv[1:]]
    return shlex.join(["python", *argv])


def provenance(command: str | None = None) -> dict:
    return {
        "command": command or _command_line(),
        "commit": git_commit(),
        "hardware": hardware(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
