"""Probes for tests/test_lock.py, imported by the interpreters it starts (PYTHONPATH=tests): a training callback
that holds a stage at a step until the test lets it go, and a Hydra callback that starts a sweep's jobs together
and records every checkpoint they load."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning as L
from hydra.experimental.callback import Callback


def wait_for(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.1)


class Gate(L.Callback):
    """Holds the fit of a stage whose directory name starts with `prefix` after step `step`: touches `ready`, then
    waits until `go` exists (a file, or a number of files matching a glob pattern: `count`)."""

    def __init__(self, ready: str, go: str, prefix: str = "", step: int = 1, count: int = 1,
                 timeout: float = 300.0) -> None:
        self.ready, self.go, self.prefix, self.step, self.count, self.timeout = ready, go, prefix, step, count, timeout

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != self.step or not Path(trainer.default_root_dir).name.startswith(self.prefix):
            return
        Path(self.ready).touch()
        go = Path(self.go)
        wait_for(lambda: len(list(go.parent.glob(go.name))) >= self.count, self.timeout, self.go)


class SweepProbe(Callback):
    """In each job of a sweep: waits until all `jobs` jobs have started (a parallel launcher's jobs start
    together); records, in `<dir>/loads.jsonl`, every checkpoint the job loads with its sha256; and touches
    `<dir>/waiting-<pid>` when the job says it is waiting for a stage another job trains."""

    def __init__(self, dir: str, jobs: int) -> None:
        self.dir, self.jobs = Path(dir), jobs

    def on_job_start(self, config, **kwargs) -> None:
        import lit_inheritune.models as models
        from lit_inheritune.io import file_sha256
        from lit_inheritune.training import lock

        load, say, pid = models.load_checkpoint, lock.say, os.getpid()

        def recording_load(path, *args, **kw):
            with open(self.dir / "loads.jsonl", "a") as f:
                f.write(json.dumps({"pid": pid, "path": str(path), "sha256": file_sha256(path)}) + "\n")
            return load(path, *args, **kw)

        def marking_say(*lines):
            say(*lines)
            if any("waiting for" in line for line in lines):
                (self.dir / f"waiting-{pid}").touch()

        models.load_checkpoint, lock.say = recording_load, marking_say
        (self.dir / f"started-{pid}").touch()
        wait_for(lambda: len(list(self.dir.glob("started-*"))) >= self.jobs, 300, "every job of the sweep to start")
