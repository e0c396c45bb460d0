"""One writer per stage directory: a lock file taken before a stage trains, released when its fit ends.

A Hydra sweep over n on a parallel launcher (SLURM arrays, joblib, submitit) starts every job at once, and each
needs the experiment's shared reference; two terminals on one command both want the same run directory. Whoever
creates `<stage dir>/writer.lock` first trains the stage; the lock file names it (host, pid, when it started).

- A stage outside this run's directory (the reference, a scratch baseline: the experiment's shared stages,
  methods/base.py `scratch_dir`) that another process trains is waited for, with one line naming the holder, and
  then used as a finished stage ("already done").
- A stage inside this run's directory (`cfg.run_dir`, the stage of this very command) that another process
  trains is one `error:` line naming the holder: only a second copy of the same command trains there, and
  waiting for it would only repeat its work or race it.
- A lock whose holder is gone is taken over with one line saying so: on the holder's own host when its process
  has exited (or its pid now belongs to another process); from another host, which cannot see the process, when
  the holder's heartbeat (the lock file's mtime, refreshed every HEARTBEAT_SECONDS by a thread) has not moved
  for STALE_SECONDS; at once when it was taken by this very SLURM job before a preemption requeued it.

The lock file is created whole with os.link from a temporary file (atomic on NFS and local filesystems alike,
where O_EXCL is not on old NFS), falling back to O_CREAT|O_EXCL on filesystems without hard links.

Under DDP every rank runs the command; only global rank 0 takes the lock. The other ranks take none: they wait
until the lock is held by a process of their own launch (`launch_key`: the SLURM job step, the torchrun
rendezvous, or the rank 0 that spawned them), or until the stage is done, so all ranks of a run leave a shared
stage together whether their rank 0 trains it or waits for another job to.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from lit_inheritune.errors import ConfigError
from lit_inheritune.training.strategy import global_rank, say

LOCK_FILE = "writer.lock"
HEARTBEAT_SECONDS = 30.0
# A holder on another host whose heartbeat is this old is gone: ten missed heartbeats, so a slow shared
# filesystem or a stalled disk does not hand a live stage to a second writer.
STALE_SECONDS = 300.0
POLL_SECONDS = 2.0
UNREADABLE_SECONDS = 10.0  # a lock file without a holder in it for this long was left half-made
# Lightning's DDP launcher re-runs the command for ranks 1.. with this process's environment: rank 0 records its
# launch key here for them.
LAUNCH_VARIABLE = "LIT_INHERITUNE_LAUNCH"


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: float  # time.time() when the lock was taken
    launch: str  # launch_key() of the holder: what the ranks of its run share
    token: str  # this taking of the lock (a pid may take it again later)
    boot_start: int | None = None  # the pid's start time in clock ticks since boot (/proc), to tell pid reuse
    restart: int = 0  # SLURM_RESTART_COUNT when taken: a later instance of the same job knows this one is gone

    def __str__(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        return f"host {self.host} pid {self.pid}, since {since}"


def owned_by_run(run_dir: str | Path, stage_dir: str | Path) -> bool:
    """Whether `stage_dir` is this run's own (its run directory or below it), as opposed to a stage shared by the
    experiment's runs (the reference, scratch baselines: methods/base.py `scratch_dir`, beside the run directories).
    Only the command of this run trains in its run directory, so a second process there is a second copy of it and
    is refused; a shared stage is legitimately wanted by several runs at once, so the others wait for it."""
    run, stage = Path(run_dir).resolve(), Path(stage_dir).resolve()
    return stage == run or run in stage.parents


def launch_key(rank_zero: bool | None = None) -> str:
    """What the processes of one (possibly distributed) run share and another run's do not."""
    env = os.environ
    if env.get("SLURM_JOB_ID") and env.get("SLURM_PROCID"):  # the tasks of one srun step
        return f"slurm:{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', '')}"
    if env.get("TORCHELASTIC_RUN_ID"):  # torchrun's workers
        return f"torchrun:{env['TORCHELASTIC_RUN_ID']}@{env.get('MASTER_ADDR', '')}:{env.get('MASTER_PORT', '')}"
    rank_zero = global_rank() == 0 if rank_zero is None else rank_zero
    if not rank_zero:
        if env.get(LAUNCH_VARIABLE):  # spawned by a rank 0 that set it (Lightning's DDP launcher)
            return env[LAUNCH_VARIABLE]
        return _master_key() or f"{socket.gethostname()}:{os.getpid()}"
    # Once per process: Lightning sets MASTER_ADDR and MASTER_PORT in rank 0 during its first fit, and the ranks
    # it spawned then keep the key they inherited for every later stage.
    if os.getpid() not in _OWN_KEY:
        _OWN_KEY[os.getpid()] = _master_key() or f"{socket.gethostname()}:{os.getpid()}"
    return _OWN_KEY[os.getpid()]


_OWN_KEY: dict[int, str] = {}  # by pid: a forked child computes its own


def _master_key() -> str | None:
    env = os.environ
    if env.get("MASTER_ADDR") and env.get("MASTER_PORT"):  # nodes started by hand with one rendezvous
        return f"master:{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
    return None


def _boot_start(pid: int) -> int | None:
    try:  # field 22 of /proc/<pid>/stat, counted after the command name (which may hold spaces)
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _restart_count() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def read_holder(path: Path) -> Holder | None:
    """The lock's holder, or None when there is no lock (or, rarely, one this process cannot read: a file written
    by a fallback O_EXCL creator that has not written yet)."""
    try:
        return Holder(**json.loads(Path(path).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


class StageLock:
    """The writer lock of one stage directory (see the module docstring). `acquire` returns once this process
    holds it; `release` gives it up (only if it is still this process's)."""

    def __init__(self, stage_dir: str | Path, label: str = "") -> None:
        self.stage_dir = Path(stage_dir)
        self.path = self.stage_dir / LOCK_FILE
        self.label = label or str(self.stage_dir)
        self.holder: Holder | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._made_dir = False
        self._seen: dict[str, tuple[float, float]] = {}  # token -> (its mtime, when first seen at that mtime)

    # -- taking it
    def acquire(self, own: bool) -> None:
        """Take the lock. Held by a live process: with `own` (a stage of this run) a ConfigError naming it; else
        wait, with one line naming it. Held by a process that is gone: taken over, with one line saying so."""
        waited, unreadable_since = False, None
        while True:
            if self._try_create():
                return
            holder = read_holder(self.path)
            if holder is None:  # released just now, or created by O_EXCL and not written yet
                unreadable_since = unreadable_since or time.monotonic()
                if time.monotonic() - unreadable_since > UNREADABLE_SECONDS and self._break(None):
                    # its creator died between creating and writing it (the O_EXCL fallback), or it was damaged
                    say(f"{self.label}: taking over the lock of {self.stage_dir}, which names no holder")
                    unreadable_since = None
                time.sleep(0.05)
                continue
            unreadable_since = None
            reason = self._stale(holder)
            if reason:
                if self._break(holder):
                    say(f"{self.label}: taking over the lock of {self.stage_dir} from {holder} ({reason})")
                continue
            if own:
                raise ConfigError(
                    f"{self.stage_dir} is being trained by another process ({holder}; lock {self.path}): a run "
                    "directory has one writer. Let that run finish (rerun then to reuse its stages) or stop it; a "
                    "lock whose process is gone is taken over")
            if not waited:
                say(f"{self.label}: waiting for {holder}, which is training it in {self.stage_dir}")
                waited = True
            time.sleep(POLL_SECONDS)

    def _try_create(self) -> bool:
        if not self.stage_dir.exists():
            self.stage_dir.mkdir(parents=True, exist_ok=True)
            self._made_dir = True
        key = launch_key(rank_zero=True)
        holder = Holder(host=socket.gethostname(), pid=os.getpid(), started=time.time(), launch=key,
                        token=secrets.token_hex(8), boot_start=_boot_start(os.getpid()), restart=_restart_count())
        data = json.dumps(asdict(holder)) + "\n"
        tmp = self.stage_dir / f".{LOCK_FILE}.{holder.token}"
        try:
            tmp.write_text(data)
        except OSError as error:  # a read-only or full filesystem: reported naming the lock, not its temporary name
            error.filename = str(self.path)
            raise
        try:
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                # NFS may report a link it made as failed (a retransmitted request): the count tells
                if os.stat(tmp).st_nlink != 2:
                    return False
            except OSError:  # no hard links here (some FUSE and SMB mounts): exclusive creation instead
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "w") as f:
                    f.write(data)
        finally:
            tmp.unlink(missing_ok=True)
        self.holder = holder
        os.environ[LAUNCH_VARIABLE] = key  # for the ranks Lightning's DDP launcher starts inside the fit
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, name="stage-lock-heartbeat", daemon=True)
        self._heartbeat.start()
        return True

    def _stale(self, holder: Holder) -> str | None:
        """Why `holder` is gone, or None while it may be alive."""
        mine = launch_key(rank_zero=True)
        if holder.launch == mine and mine.startswith("slurm:") and holder.restart < _restart_count():
            # SLURM runs one instance of a job at a time: a lock this job took before its latest requeue was left
            # by an instance that is gone, on whichever node that was. (Processes of one instance, e.g. a sweep's
            # workers inside one allocation, share the key and restart count: they are judged as any others.)
            return "left by this SLURM job before it was requeued"
        if holder.host == socket.gethostname():
            if holder.pid == os.getpid():
                # fit_stage is not re-entered, so a lock of this very process is one an earlier fit left behind
                return "left by this process"
            if not _alive(holder.pid):
                return "its process has exited"
            start = _boot_start(holder.pid)
            if None not in (start, holder.boot_start) and start != holder.boot_start:
                return "its process has exited; the pid is another process's now"
            return None
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        # Both the lock's mtime by this host's clock and how long this process has seen it unchanged: the first
        # decides at once when clocks agree, the second when they do not (a shared filesystem's server clock).
        now = time.time()
        seen_mtime, since = self._seen.get(holder.token, (None, now))
        if seen_mtime != mtime:
            since = now
        self._seen[holder.token] = (mtime, since)
        age = max(now - mtime, now - since)
        if age > STALE_SECONDS:
            return f"its heartbeat is {age:.0f} s old, over {STALE_SECONDS:.0f} s"
        return None

    def _break(self, holder: Holder | None) -> bool:
        """Remove the stale lock of `holder` (None: the lock that names none); False when another process removed
        it first or it is someone else's by now (then it is put back)."""
        aside = self.stage_dir / f".{LOCK_FILE}.stale.{secrets.token_hex(4)}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        taken = read_holder(aside)
        if (taken and taken.token) != (holder and holder.token):  # a fresh lock replaced the stale one meanwhile
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            if not self._ours():
                return
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def _ours(self) -> bool:
        found = read_holder(self.path)
        return self.holder is not None and found is not None and found.token == self.holder.token

    # -- giving it up
    def release(self) -> None:
        if self.holder is None:
            return
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self._ours():
            self.path.unlink(missing_ok=True)
        self.holder = None
        if self._made_dir:  # a fit that left nothing (it failed before a checkpoint) leaves no directory either
            with contextlib.suppress(OSError):
                self.stage_dir.rmdir()


def follow(stage_dir: str | Path, own: bool, done: Callable[[], bool]) -> None:
    """A rank other than 0: return once the stage's lock is held by this run's rank 0 (it trains it: join the fit)
    or the stage is done. A live lock of another run on this run's own stage is the error rank 0 raises too."""
    path = Path(stage_dir) / LOCK_FILE
    key = launch_key(rank_zero=False)
    while True:
        holder = read_holder(path)
        if holder is not None and holder.launch == key:
            return
        if done():
            return
        if own and holder is not None and holder.host == socket.gethostname() and _alive(holder.pid):
            raise ConfigError(f"{stage_dir} is being trained by another process ({holder}; lock {path}): a run "
                              "directory has one writer")
        time.sleep(POLL_SECONDS)


@contextlib.contextmanager
def stage_lock(stage_dir: str | Path, *, own: bool, done: Callable[[], bool], label: str = "") -> Iterator[None]:
    """Hold the writer lock of `stage_dir` for the block (see the module docstring); `done()` says whether the
    stage is finished (its result file exists), in which case nothing is locked: it is only read."""
    if done():
        yield
        return
    if global_rank() != 0:
        follow(stage_dir, own, done)
        yield
        return
    lock = StageLock(stage_dir, label)
    lock.acquire(own)
    try:
        yield
    finally:
        lock.release()
