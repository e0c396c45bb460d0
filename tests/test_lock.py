"""One writer per stage directory (training/lock.py): the lock itself in this process, a run against a lock
another process holds, and real processes racing for one stage (two terminals, a parallel sweep over n)."""

import csv
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import TINY

from lit_inheritune.config import compose
from lit_inheritune.errors import ConfigError
from lit_inheritune.io import file_sha256
from lit_inheritune.training import lock
from lit_inheritune.training.lock import LOCK_FILE, Holder, StageLock, owned_by_run, read_holder, stage_lock

TESTS = Path(__file__).parent


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setattr(lock, "POLL_SECONDS", 0.05)


@pytest.fixture
def other_process():
    """A live process of this host that is not this one (its pid holds the locks the tests plant)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _plant(stage_dir: Path, pid: int, host: str | None = None, launch: str = "elsewhere", **extra) -> Holder:
    """A lock file as another process would have left it."""
    holder = Holder(**{"host": host or socket.gethostname(), "pid": pid, "started": time.time() - 60,
                       "launch": launch, "token": f"t{pid}", "boot_start": lock._boot_start(pid), **extra})
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / LOCK_FILE).write_text(json.dumps(holder.__dict__))
    return holder


def _release_later(path: Path, seconds: float, then=None) -> threading.Thread:
    def release():
        time.sleep(seconds)
        if then:
            then()
        path.unlink()

    thread = threading.Thread(target=release)
    thread.start()
    return thread


def _within(seconds: float, fn):
    """fn() run in a thread, so a lock that waits forever fails the test instead of hanging it."""
    outcome = {}

    def call():
        try:
            outcome["value"] = fn()
        except BaseException as error:  # re-raised below, in the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


# -- the lock in one process

def test_the_lock_names_its_holder_and_is_gone_after_release(tmp_path):
    stage = tmp_path / "new-stage"
    with stage_lock(stage, own=True, done=lambda: False):
        holder = read_holder(stage / LOCK_FILE)
        assert (holder.host, holder.pid) == (socket.gethostname(), os.getpid())
        assert abs(holder.started - time.time()) < 60
        assert [p.name for p in stage.iterdir()] == [LOCK_FILE]  # the temporary file it was linked from is gone
    assert not stage.exists()  # made for the lock and left empty: removed, as a failed fit leaves no directory
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(RuntimeError), stage_lock(kept, own=True, done=lambda: False):
        raise RuntimeError("the fit failed")
    assert kept.is_dir() and not (kept / LOCK_FILE).exists()  # released on failure; a directory it found stays


def test_a_finished_stage_is_read_without_locking(tmp_path, other_process):
    _plant(tmp_path, other_process.pid)
    with stage_lock(tmp_path, own=True, done=lambda: True):  # held by a live process, yet no error and no wait
        pass
    assert read_holder(tmp_path / LOCK_FILE).pid == other_process.pid


def test_own_stage_held_by_a_live_process_is_an_error_naming_it(tmp_path, other_process):
    _plant(tmp_path, other_process.pid)
    with pytest.raises(ConfigError, match=rf"host {socket.gethostname()} pid {other_process.pid}, since "):
        StageLock(tmp_path).acquire(own=True)
    assert read_holder(tmp_path / LOCK_FILE).pid == other_process.pid  # not taken


def test_shared_stage_held_by_a_live_process_is_waited_for_with_one_line(tmp_path, other_process, fast, capsys):
    _plant(tmp_path, other_process.pid)
    thread = _release_later(tmp_path / LOCK_FILE, 1.0)
    start = time.monotonic()

    def take():
        with stage_lock(tmp_path, own=False, done=lambda: False, label="[x] stage 1 of 2: reference"):
            assert read_holder(tmp_path / LOCK_FILE).pid == os.getpid()

    _within(30, take)
    thread.join()
    assert time.monotonic() - start >= 1.0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("[x] stage 1 of 2: reference: waiting for ")
    assert f"pid {other_process.pid}" in lines[0] and str(tmp_path) in lines[0]


def test_a_lock_whose_process_exited_is_taken_over_with_one_line(tmp_path, capsys):
    pid = _dead_pid()
    _plant(tmp_path, pid)
    with stage_lock(tmp_path, own=True, done=lambda: False, label="[x] reference"):
        assert read_holder(tmp_path / LOCK_FILE).pid == os.getpid()
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith(f"[x] reference: taking over the lock of {tmp_path} from host ")
    assert f"pid {pid}," in line and "its process has exited" in line


def test_a_lock_file_naming_no_holder_is_taken_over_after_a_grace(tmp_path, fast, monkeypatch, capsys):
    """Left by a process killed between creating the file and writing it (exclusive creation, on a filesystem
    without hard links)."""
    monkeypatch.setattr(lock, "UNREADABLE_SECONDS", 0.3)
    (tmp_path / LOCK_FILE).write_text("")
    start = time.monotonic()
    _within(30, lambda: StageLock(tmp_path, "[x] reference").acquire(own=True))
    assert time.monotonic() - start >= 0.3
    assert read_holder(tmp_path / LOCK_FILE).pid == os.getpid()
    assert capsys.readouterr().out == f"[x] reference: taking over the lock of {tmp_path}, which names no holder\n"


def test_a_reused_pid_does_not_keep_a_lock(tmp_path, other_process, capsys):
    if lock._boot_start(other_process.pid) is None:
        pytest.skip("no /proc here: pid reuse is not told apart")
    _plant(tmp_path, other_process.pid, boot_start=lock._boot_start(other_process.pid) - 1)
    StageLock(tmp_path).acquire(own=True)
    assert "the pid is another process's now" in capsys.readouterr().out


def test_a_holder_on_another_host_is_judged_by_its_heartbeat(tmp_path, fast, monkeypatch, capsys):
    monkeypatch.setattr(lock, "STALE_SECONDS", 100.0)
    path = tmp_path / LOCK_FILE
    _plant(tmp_path, 1, host="gpu-node-7")  # pid 1 is alive here: only the heartbeat can tell
    with pytest.raises(ConfigError, match="host gpu-node-7 pid 1"):  # fresh: alive
        StageLock(tmp_path).acquire(own=True)
    os.utime(path, (time.time() - 150, time.time() - 150))  # ten missed heartbeats and more
    lk = StageLock(tmp_path, "[x] reference")
    lk.acquire(own=True)
    assert read_holder(path).pid == os.getpid()
    lk.release()
    out = capsys.readouterr().out
    assert "from host gpu-node-7 pid 1," in out and "its heartbeat is 150 s old, over 100 s" in out


def test_a_remote_heartbeat_that_stops_moving_is_stale_whatever_the_clocks(tmp_path, fast, monkeypatch, capsys):
    """A shared filesystem's server clock may run ahead: an mtime in the future never ages by the local clock, so
    the waiter also counts how long it has seen the heartbeat stand still."""
    monkeypatch.setattr(lock, "STALE_SECONDS", 0.5)
    _plant(tmp_path, 1, host="gpu-node-7")
    os.utime(tmp_path / LOCK_FILE, (time.time() + 3600, time.time() + 3600))
    start = time.monotonic()
    _within(30, lambda: StageLock(tmp_path).acquire(own=False))
    assert time.monotonic() - start >= 0.5
    out = capsys.readouterr().out.splitlines()
    assert "waiting for host gpu-node-7 pid 1" in out[0] and "taking over" in out[1] and len(out) == 2


def test_a_requeued_slurm_job_takes_over_the_lock_it_left_on_another_node(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    sibling = subprocess.Popen(["sleep", "60"])  # another process of the same job instance, alive: not taken over
    try:
        _plant(tmp_path, sibling.pid, launch="slurm:77.0")
        with pytest.raises(ConfigError, match=f"pid {sibling.pid}"):
            StageLock(tmp_path).acquire(own=True)
    finally:
        sibling.kill()
        sibling.wait()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    _plant(tmp_path, 4711, host="gpu-node-7", launch="slurm:77.0")  # killed at preemption, heartbeat still fresh
    StageLock(tmp_path, "[x] reference").acquire(own=True)
    assert read_holder(tmp_path / LOCK_FILE).pid == os.getpid()
    assert "from host gpu-node-7 pid 4711, since" in capsys.readouterr().out
    _plant(tmp_path, 4712, host="gpu-node-8", launch="slurm:78.0")  # another job: alive as far as anyone knows
    with pytest.raises(ConfigError, match="host gpu-node-8 pid 4712"):
        StageLock(tmp_path).acquire(own=True)


def test_the_holder_refreshes_its_heartbeat(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "HEARTBEAT_SECONDS", 0.05)
    lk = StageLock(tmp_path)
    lk.acquire(own=True)
    path = tmp_path / LOCK_FILE
    os.utime(path, (time.time() - 1000, time.time() - 1000))
    time.sleep(0.5)
    assert time.time() - path.stat().st_mtime < 5
    lk.release()
    assert not path.exists()


def test_a_stale_lock_replaced_meanwhile_is_put_back(tmp_path, other_process):
    """Two processes judged the same dead holder stale; one broke it and took the lock: the other must not remove
    the new holder's lock."""
    _plant(tmp_path, _dead_pid())
    stale = read_holder(tmp_path / LOCK_FILE)
    live = _plant(tmp_path, other_process.pid)  # the first taker's lock, in place by the time the second acts
    assert not StageLock(tmp_path)._break(stale)
    assert read_holder(tmp_path / LOCK_FILE) == live
    assert [p.name for p in tmp_path.iterdir()] == [LOCK_FILE]


def test_release_leaves_a_lock_that_is_no_longer_its_own(tmp_path):
    lk = StageLock(tmp_path)
    lk.acquire(own=True)
    theirs = _plant(tmp_path, 1, host="gpu-node-7")  # taken over by another host that judged this one stale
    lk.release()
    assert read_holder(tmp_path / LOCK_FILE) == theirs


def test_stages_of_the_run_are_its_own_and_the_experiments_are_shared(tmp_path):
    run_dir = tmp_path / "outputs" / "demo" / "inheritune-n2-block-reinherit-s1"
    assert owned_by_run(run_dir, run_dir)  # a growing fit, a one-stage method
    assert owned_by_run(run_dir, run_dir / "round2-L3")  # a stage of its own under FSDP
    assert not owned_by_run(run_dir, run_dir.parent / "scratch-L4-T20-s1")  # the reference
    assert not owned_by_run(run_dir, run_dir.parent / "inheritune-n2-block-reinherit-s10")


# -- ranks of a distributed run

def test_only_rank_zero_locks_and_other_ranks_follow_their_own(tmp_path, fast, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")  # a rank Lightning's DDP launcher started from its rank 0
    monkeypatch.setenv(lock.LAUNCH_VARIABLE, "host-a:100")
    for var in ("RANK", "SLURM_PROCID", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    _plant(tmp_path, 1, host="host-a", launch="host-a:100")
    joined = []

    def join():
        with stage_lock(tmp_path, own=True, done=lambda: False):  # its rank 0 holds it: join that fit at once
            joined.append(read_holder(tmp_path / LOCK_FILE).launch)

    _within(10, join)
    assert joined == ["host-a:100"]

    other = tmp_path / "shared"
    _plant(other, 1, host="host-b", launch="host-b:200")  # another job's rank 0 trains the shared stage
    result = other / "result.json"
    thread = _release_later(other / LOCK_FILE, 1.0, then=result.touch)
    start = time.monotonic()

    def follow():
        with stage_lock(other, own=False, done=result.exists):
            assert result.exists()  # left once the stage was done, never joining another job's fit

    _within(30, follow)
    thread.join()
    assert time.monotonic() - start >= 1.0
    assert read_holder(other / LOCK_FILE) is None  # and took no lock itself


def test_rank_zero_spawned_ranks_inherit_its_launch_key(monkeypatch):
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "MASTER_ADDR",
                "MASTER_PORT", lock.LAUNCH_VARIABLE):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(lock, "_OWN_KEY", {})
    key = lock.launch_key()
    assert key == f"{socket.gethostname()}:{os.getpid()}"
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # Lightning sets these in rank 0 during its first fit
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert lock.launch_key() == key  # kept for the later stages, whose spawned ranks inherited it
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert lock.launch_key() == "slurm:77.0"  # every task of the srun step, whatever its rank


# -- a run against a lock another process holds (in this process)

def _cfg(tmp_path, data_dir, *extra):
    return compose([*TINY, "train.max_steps=20", "train.val_every_n_steps=10", f"paths.root_dir={tmp_path}",
                    f"data.data_dir={data_dir}", *extra])


def _steps(stage_dir) -> tuple[list[int], list[int]]:
    """The steps of a stage's CSV log with a train loss, and with a val loss."""
    with open(Path(stage_dir) / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return ([int(r["step"]) for r in rows if r.get("train/loss")], [int(r["step"]) for r in rows if r.get("val/loss")])


def test_a_run_whose_stage_is_held_by_a_live_process_stops_before_writing(tmp_path, fixture_data_dir,
                                                                           other_process):
    from lit_inheritune.run import run

    cfg = _cfg(tmp_path, fixture_data_dir)
    _plant(Path(cfg.run_dir), other_process.pid)
    with pytest.raises(ConfigError, match=rf"is being trained by another process \(host \S+ pid {other_process.pid}"):
        run(cfg)
    assert [p.name for p in Path(cfg.run_dir).iterdir()] == [LOCK_FILE]  # no identity, config or log of its own


def test_a_run_takes_over_a_stale_lock_and_trains_once(tmp_path, fixture_data_dir, capsys):
    from lit_inheritune.run import run

    cfg = _cfg(tmp_path, fixture_data_dir)
    pid = _dead_pid()
    _plant(Path(cfg.run_dir), pid)
    [result] = run(cfg)
    out = capsys.readouterr().out
    assert sum("taking over the lock" in line for line in out.splitlines()) == 1
    assert f"pid {pid}, since" in out and "its process has exited" in out
    assert result["steps"] == 20 and not (Path(cfg.run_dir) / LOCK_FILE).exists()
    train, val = _steps(cfg.run_dir)
    assert val == [9, 19] and len(train) == len(set(train)) == 4


# -- real processes

def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}


def _wait_for(condition, what, proc=None, timeout=300.0):
    end = time.monotonic() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, f"the process ended (code {proc.returncode}) before {what}"
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.2)


@pytest.mark.subprocess
def test_two_processes_on_one_run_one_trains_the_other_refuses_and_a_run_sharing_its_stage_waits(
        tmp_path, fixture_data_dir):
    """Two terminals on one command: the second stops with one error line naming the first. A run of another
    method whose reference is that very stage (the experiment's scratch run of the reference's size) waits for it
    and then uses it. The stage is trained once: its log has every step once."""
    cmd = [sys.executable, "-m", "lit_inheritune", *TINY, "train.max_steps=20", "train.val_every_n_steps=10",
           f"paths.root_dir={tmp_path}", f"data.data_dir={fixture_data_dir}", "name=twice", "model.n_layer=2"]
    gate = ["+callbacks.gate._target_=lock_probe.Gate", f"+callbacks.gate.ready={tmp_path / 'ready'}",
            f"+callbacks.gate.go={tmp_path / 'go'}", "+callbacks.gate.step=5"]
    run_dir = tmp_path / "outputs" / "twice" / "scratch-L2-T20-s1"
    logs = {name: open(tmp_path / f"{name}.log", "w+") for name in ("first", "sharer")}
    first = subprocess.Popen(cmd + gate, stdout=logs["first"], stderr=subprocess.STDOUT, env=_env(), text=True)
    sharer = None
    try:
        _wait_for((tmp_path / "ready").exists, "the first run to train", first)
        second = subprocess.run(cmd + gate, capture_output=True, text=True, env=_env(), timeout=300)
        assert second.returncode == 2, second.stderr[-3000:]
        assert second.stderr.splitlines() == [second.stderr.strip()], second.stderr  # one line
        assert second.stderr.startswith(f"error: {run_dir} is being trained by another process (host "
                                        f"{socket.gethostname()} pid {first.pid}, since ")
        assert "stage 1 of 1" not in second.stdout  # it trained nothing

        sharer = subprocess.Popen(cmd + ["method=inheritune", "method.n_layer=1", "method.max_layers=1"],
                                  stdout=logs["sharer"], stderr=subprocess.STDOUT, env=_env(), text=True)
        _wait_for(lambda: "waiting for" in (tmp_path / "sharer.log").read_text(), "the sharer to wait", sharer)
        (tmp_path / "go").touch()
        assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-3000:]
        assert sharer.wait(timeout=300) == 0, (tmp_path / "sharer.log").read_text()[-3000:]
    finally:
        for proc in (first, sharer):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    shared = [line for line in (tmp_path / "sharer.log").read_text().splitlines() if ": reference (" in line]
    assert len(shared) == 2, shared
    assert f"waiting for host {socket.gethostname()} pid {first.pid}, since " in shared[0]
    result = json.loads((run_dir / "result.json").read_text())
    assert shared[1].endswith(f": already done, val loss {result['val_loss']:.4f} ({run_dir})")
    train, val = _steps(run_dir)
    assert val == [9, 19] and len(train) == len(set(train)) == 4
    assert not (run_dir / LOCK_FILE).exists()


@pytest.mark.subprocess
def test_a_parallel_sweep_over_n_trains_the_reference_once(tmp_path, fixture_data_dir):
    """`-m method.n_layer=1,2,3` on Hydra's joblib launcher, three jobs at once (started together, and the
    reference held at step 1 until the two other jobs wait for it): one job trains the reference, the two others
    wait and use it; all three inherit from the same checkpoint; every log has every step once."""
    probe = tmp_path / "probe"
    probe.mkdir()
    cmd = [sys.executable, "-m", "lit_inheritune", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=3",
           *TINY, "train.max_steps=20", "train.val_every_n_steps=10", f"paths.root_dir={tmp_path}",
           f"data.data_dir={fixture_data_dir}", "name=sweep", "method=inheritune", "model.n_layer=4",
           "method.n_layer=1,2,3", "method.tolerance=100",
           "+hydra.callbacks.probe._target_=lock_probe.SweepProbe", f"+hydra.callbacks.probe.dir={probe}",
           "+hydra.callbacks.probe.jobs=3",
           "+callbacks.gate._target_=lock_probe.Gate", f"+callbacks.gate.ready={probe / 'ready'}",
           f"+callbacks.gate.go={probe / 'waiting-*'}", "+callbacks.gate.count=2", "+callbacks.gate.prefix=scratch-",
           "+callbacks.gate.timeout=120"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    lines = out.stdout.splitlines()
    reference = [line for line in lines if ": reference (" in line]
    trained = [line for line in reference if line.endswith(", 20 steps")]
    waited = [line for line in reference if ": waiting for " in line]
    reused = [line for line in reference if ": already done, " in line]
    assert (len(trained), len(waited), len(reused)) == (1, 2, 2), "\n".join(lines)

    ref_dir = tmp_path / "outputs" / "sweep" / "scratch-L4-T20-s1"
    ckpt = ref_dir / "checkpoints" / "last.ckpt"
    loads = [json.loads(line) for line in (probe / "loads.jsonl").read_text().splitlines()]
    ref_loads = [load for load in loads if Path(load["path"]).resolve() == ckpt.resolve()]
    assert len({load["pid"] for load in ref_loads}) == 3  # each job loaded the reference ...
    assert {load["sha256"] for load in ref_loads} == {file_sha256(ckpt)}  # ... the same checkpoint, the final one

    train, val = _steps(ref_dir)
    assert val == [9, 19] and len(train) == len(set(train)) == 4
    for n in (1, 2, 3):
        run_dir = tmp_path / "outputs" / "sweep" / f"inheritune-n{n}-block-reinherit-s1"
        train, val = _steps(run_dir / f"round1-L{n}")
        # a round's log starts with its inherited model's score (GrowCallback), then validates every 10 steps
        assert val == [0, 9, 19] and len(train) == len(set(train)) == 4
        assert json.loads((run_dir / f"round1-L{n}" / "result.json").read_text())["n_layer"] == n
        assert not (run_dir / LOCK_FILE).exists()
    assert not (ref_dir / LOCK_FILE).exists()
