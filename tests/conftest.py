"""Tests run offline and write only below pytest's tmp dirs.

`make test` runs them on pytest-xdist workers, one per core (-n auto): each worker, and every interpreter a test
starts, then runs torch on its share of the cores; session fixtures (the prepared fixture corpus, the trained
references) are built once per worker, below that worker's own tmp dir."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# pytest-xdist sets the worker count before this file is imported; one process alone keeps up to two threads.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
if WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))  # the interpreters the tests start inherit it

import logging  # noqa: E402
import runpy  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"

torch.set_num_threads(THREADS)


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist, the long tests first (several processes, the GGUF, a fresh interpreter), the others in
    their files' order: the workers then end on short tests, at about the same time."""
    if WORKERS > 1:
        light = lambda item: not any(item.get_closest_marker(m) for m in ("distributed", "gguf", "subprocess"))
        items.sort(key=light)  # stable: the heavy (light False) first, each group in collection order


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Anything that writes to a default location (W&B, caches, outputs) writes to a tmp dir."""
    root = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("LIT_INHERITUNE_ROOT", str(root))
    monkeypatch.setenv("WANDB_DIR", str(root))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(root / "wandb-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(root / "wandb-config"))
    monkeypatch.setenv("HF_HOME", str(root / "hf"))
    monkeypatch.setenv("MPLCONFIGDIR", str(root / "mpl"))
    if "datasets" in sys.modules:  # imported while collecting (lm_eval): it read its cache paths then, from ~/.cache
        config = sys.modules["datasets"].config
        monkeypatch.setattr(config, "HF_DATASETS_CACHE", root / "hf" / "datasets")
        monkeypatch.setattr(config, "DOWNLOADED_DATASETS_PATH", root / "hf" / "datasets" / "downloads")
        monkeypatch.setattr(config, "EXTRACTED_DATASETS_PATH", root / "hf" / "datasets" / "downloads" / "extracted")


# Overrides for a run of seconds on the fixture corpus.
TINY = [
    "model=cpu_tiny",
    "data=fixture",
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "train.max_steps=40",
    "train.val_every_n_steps=20",
    "train.log_every_n_steps=5",
    "optim.warmup_steps=5",
    "optim.lr=3e-3",
]


@pytest.fixture(scope="session")
def fixture_data_dir(tmp_path_factory):
    """The fixture corpus prepared once per session (BPE-512), shared read-only by the tests."""
    from lit_inheritune.config import compose
    from lit_inheritune.data.prepare import prepare

    out = tmp_path_factory.mktemp("fixture-data") / "fixture-bpe512"
    cfg = compose(["data=fixture", "model=cpu_tiny"])
    prepare(out_dir=out, **{k: v for k, v in _plain(cfg.data.prepare).items()})
    return out


def _plain(node):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)


@pytest.fixture(scope="session")
def _trained_references(tmp_path_factory):
    """A reference's identity (as JSON) -> its stage directory, trained once per session (per xdist worker)."""
    return tmp_path_factory.mktemp("references"), {}


@pytest.fixture
def shared_reference(_trained_references):
    """`shared_reference(cfg)`: the reference stage `cfg` would train first (the experiment's scratch run of the
    reference's depth, steps and seed) put in place already trained, as a sweep's earlier job would have left it,
    so `run(cfg)` finds it done (training/identity.py) and trains only what the test is about. For tests whose
    point is not the reference's own training (that is tested in test_inheritune.py, test_run_identity.py).

    The directory is a copy of one trained under the same identity earlier in the session, by the recipe's own
    obtain_reference with this config (only paths.log_dir elsewhere); one a test changes stays its own. The run
    refuses the copy if its identity is not the one `cfg` asks for, so a test never silently uses another
    reference. Call it before patching anything training uses (the first call may train). Returns `cfg`."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lit_inheritune.methods import make_run, obtain_reference, reference_stage

    root, trained = _trained_references

    def populate(cfg):
        stage = reference_stage(make_run(cfg))
        assert stage is not None, "this config gives its reference (a checkpoint, a pretrained model): none to share"
        key = json.dumps(stage.identity, sort_keys=True, default=str)
        if key not in trained:
            train_cfg = OmegaConf.merge(cfg, {"paths": {"log_dir": str(root / f"r{len(trained)}")}})
            datamodule = instantiate(train_cfg.data)
            datamodule.prepare_data()
            train_run = make_run(train_cfg)
            obtain_reference(train_run, datamodule)
            trained[key] = reference_stage(train_run).dir
        source, dest = trained[key], stage.dir
        assert not dest.exists(), dest
        shutil.copytree(source, dest)
        result = json.loads((dest / "result.json").read_text())
        for name in ("last_checkpoint", "best_checkpoint"):  # the paths the run recorded, as if trained here
            if result.get(name):
                result[name] = str(dest / Path(result[name]).relative_to(source))
        (dest / "result.json").write_text(json.dumps(result))
        return cfg

    return populate


# A fresh interpreter's warning filters (no -W options): shown once per place, but for these.
PYTHON_WARNING_FILTERS = [("default", DeprecationWarning, "__main__"), ("ignore", DeprecationWarning, ""),
                          ("ignore", PendingDeprecationWarning, ""), ("ignore", ImportWarning, ""),
                          ("ignore", ResourceWarning, "")]


@pytest.fixture
def run_in_process(monkeypatch, capfd):
    """`run_in_process([module, *args], cwd, **env)`: what `python -m module args...` run from `cwd` with
    LIT_INHERITUNE_ROOT=cwd (and `env`) does, in this process: runpy runs the module as __main__, as the
    interpreter would, with sys.argv, the working directory and the environment set for the call. Returns a
    CompletedProcess: the exit code (a SystemExit's, else 0) and what was written to stdout and stderr, the
    warnings a fresh interpreter would print (its default filters) included. An exception that escapes (a bug,
    or a traceback asked for with HYDRA_FULL_ERROR=1) propagates. Loggers are restored afterwards (Hydra
    configures logging for a sweep). tests/test_cli_errors.py runs one case per entry point as a real subprocess
    too."""

    def run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
        loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                          if isinstance(lg, logging.Logger))]
        saved = [(lg, lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers]
        code = 0
        with monkeypatch.context() as m:
            m.chdir(cwd)
            m.delenv("HYDRA_FULL_ERROR", raising=False)
            for key, value in {"LIT_INHERITUNE_ROOT": str(cwd), **env}.items():
                m.setenv(key, value)
            m.setattr(sys, "argv", list(argv))  # runpy sets argv[0] to the module's file, as `python -m` does
            capfd.readouterr()
            try:
                with warnings.catch_warnings(record=True) as shown:
                    warnings.resetwarnings()  # Python's own filters, not pytest's, for what the interpreter prints
                    for action, category, module in PYTHON_WARNING_FILTERS:
                        warnings.filterwarnings(action, category=category, module=module, append=True)
                    # the module was imported before (by the tests): runpy warns that it runs it again
                    warnings.filterwarnings("ignore", "'.*' found in sys.modules", RuntimeWarning)
                    try:
                        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
                    finally:
                        for w in shown:
                            sys.stderr.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line))
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
            finally:
                out, err = capfd.readouterr()
                for lg, handlers, level, propagate, disabled in saved:
                    lg.handlers[:], lg.level, lg.propagate, lg.disabled = handlers, level, propagate, disabled
                for lg in set(logging.Logger.manager.loggerDict.values()) - set(loggers):  # made by the call
                    if isinstance(lg, logging.Logger):
                        lg.handlers.clear()
        return subprocess.CompletedProcess(argv, code, out, err)

    return run


@pytest.fixture
def initial_models(monkeypatch):
    """stage name -> a copy of the model each stage starts from, taken before any step: what surgery (or a fresh
    init) built, so tests can check a stage's starting weights against their sources. A stage of its own fit is
    recorded when fit_stage is handed its module; a stage a growing fit grows into, when the GrowCallback installs
    it. The stages still train as usual."""
    import copy

    from lit_inheritune.training import grow, runner

    built = {}

    def recording(fit):
        def fit_and_record(cfg, module, *args, **kwargs):
            built.setdefault(kwargs["stage"], copy.deepcopy(module.model))
            return fit(cfg, module, *args, **kwargs)
        return fit_and_record

    monkeypatch.setattr(runner, "fit_stage", recording(runner.fit_stage))
    install = grow.GrowCallback._install

    def recording_install(self, trainer, pl_module, model):
        built[self.growth.stages[self.index].name] = copy.deepcopy(model)
        return install(self, trainer, pl_module, model)

    monkeypatch.setattr(grow.GrowCallback, "_install", recording_install)
    return built
