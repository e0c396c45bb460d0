"""Bad input through every command-line entry point (issue #12): one line `error: ...` on stderr naming the key
or file, exit code 2, no traceback, and nothing created or changed on disk. Each case runs `python -m <entry point>`
in this process (conftest.run_in_process); one case per entry point also runs as a real subprocess, so the exit
code and the single stderr line are checked end to end."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY

from lit_inheritune.models.gpt import GPT, GPTConfig

REPO = Path(__file__).resolve().parents[1]
TINY_SHAPE = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=512)  # model=cpu_tiny


def save_checkpoint(run_dir: Path, data_dir: Path, **shape) -> Path:
    """<run_dir>/checkpoints/last.ckpt with the parts of a CausalLM checkpoint that are read, and the run's
    config.yaml naming its data (where evaluate and export find the tokenizer)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY_SHAPE, **shape}))
    path = run_dir / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model": model.config.to_dict()}}, path)
    (run_dir / "config.yaml").write_text(f"data:\n  data_dir: {data_dir}\n")
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory, fixture_data_dir) -> dict[str, Path]:
    """Checkpoints of the tiny model and of other shapes, a truncated one, and broken copies of the prepared
    fixture data, each named by what is wrong with it."""
    root = tmp_path_factory.mktemp("bad-inputs")
    paths = {"root": root, "data": fixture_data_dir}
    for name, shape in {"good": {}, "deeper": {"n_layer": 4}, "shallower": {"n_layer": 1},
                        "wider": {"n_embd": 64}, "narrower": {"n_embd": 16}}.items():
        paths[name] = save_checkpoint(root / "runs" / name, fixture_data_dir, **shape)
    truncated = save_checkpoint(root / "runs" / "truncated", fixture_data_dir)
    shutil.copy(truncated, truncated.with_name("best.ckpt"))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    paths["truncated"] = truncated

    def broken_data(name: str, damage) -> Path:
        copy = root / "data" / name
        shutil.copytree(fixture_data_dir, copy)
        damage(copy)
        return copy

    def edit_manifest(edit):
        def damage(d):
            manifest = json.loads((d / "manifest.json").read_text())
            edit(manifest)
            (d / "manifest.json").write_text(json.dumps(manifest))
        return damage

    def flip_byte(d):
        data = bytearray((d / "val.bin").read_bytes())
        data[100] ^= 0xFF
        (d / "val.bin").write_bytes(bytes(data))

    paths["edited_manifest"] = broken_data("edited", edit_manifest(lambda m: m["config"].update(val_fraction=0.2)))
    paths["edited_checksum"] = broken_data(
        "edited-sha", edit_manifest(lambda m: m["splits"]["train"].update(sha256="0" * 64)))
    paths["truncated_shard"] = broken_data(
        "truncated-shard", lambda d: (d / "train.bin").write_bytes((d / "train.bin").read_bytes()[:-2]))
    paths["flipped_shard"] = broken_data("flipped", flip_byte)
    export_out = root / "hf-export"
    export_out.mkdir()
    (export_out / "notes.txt").write_text("mine")
    paths["export_out"] = export_out
    return paths


def train(*overrides: str) -> list[str]:
    return ["lit_inheritune", *TINY, *overrides]


# id: (argv after `python -m`, with {placeholders} from `work` and {case}, the case's own empty directory;
#      fragments the error line must contain)
CASES = {
    "n_layer_above_reference": (
        train("method=inheritune", "model.n_layer=2", "method.n_layer=3"),
        ["method.n_layer=3", "2-layer reference"]),
    "given_reference_deeper": (
        train("method=inheritune", "reference=ckpt", "reference.ckpt={deeper}"),
        ["reference.ckpt=", "n_layer=4", "model.n_layer=2"]),
    "given_reference_shallower": (
        train("method=inheritune", "method.n_layer=1", "reference=ckpt", "reference.ckpt={shallower}"),
        ["reference.ckpt=", "n_layer=1", "model.n_layer=2"]),
    "given_reference_wider": (
        train("method=kd", "method.n_layer=1", "reference=ckpt", "reference.ckpt={wider}"),
        ["reference.ckpt=", "n_embd=64", "model.n_embd=32"]),
    "given_reference_narrower": (
        train("method=hybrid_stacking", "method.n_layer=2", "reference=ckpt", "reference.ckpt={narrower}"),
        ["reference.ckpt=", "n_embd=16", "model.n_embd=32"]),
    "given_reference_truncated": (
        train("method=inheritune", "reference=ckpt", "reference.ckpt={truncated}"),
        ["truncated/checkpoints/last.ckpt is corrupt", "not a usable checkpoint: give another reference.ckpt=",
         "reference.ckpt=", "best.ckpt"]),
    "parts_typo": (train("method=inheritune", "method.parts=atn"), ["method.parts='atn'", "attn_mlp"]),
    "grow_by_zero": (train("method=inheritune", "method.grow_by=0"), ["method.grow_by=0"]),
    "negative_steps": (train("train.max_steps=-20"), ["train.max_steps=-20"]),
    "negative_reference_steps": (
        train("method=inheritune", "reference.max_steps=-40"), ["reference.max_steps", "-40"]),
    "trainer_min_steps": (train("method=inheritune", "+trainer.min_steps=20"), ["trainer.min_steps=20", "remove"]),
    "steps_not_a_number": (train("train.max_steps=abc"), ["train.max_steps=abc", "Integer"]),
    "lr_not_a_number": (train("optim.lr=fast"), ["optim.lr=fast", "Float"]),
    "misspelt_key": (train("train.max_stepz=10"), ["train.max_stepz is not a config key"]),
    "unknown_group_option": (train("model=cpu_tinyy"), ["model/cpu_tinyy", "cpu_tiny"]),
    "unparsable_override": (train("train.max_steps=[1"), ["train.max_steps=[1"]),
    "bad_job_in_a_sweep": (
        ["lit_inheritune", "-m", *TINY, "method=inheritune", "method.parts=block,atn"], ["method.parts='atn'"]),
    "missing_data_dir_without_prepare": (
        train("data.data_dir={case}/nowhere", "data.prepare=null"), ["data.data_dir=", "nowhere", "prepare"]),
    "missing_data_dir_and_no_corpus": (
        train("data.data_dir={case}/new", "data.prepare.source.paths=[{case}/no-corpus]"),
        ["data.prepare.source.paths", "no-corpus"]),
    "edited_manifest": (train("data.data_dir={edited_manifest}"), ["val_fraction: prepared 0.2, asked 0.15"]),
    "edited_manifest_checksum": (
        train("data.data_dir={edited_checksum}"), ["edited-sha/train.bin", "checksum mismatch"]),
    "truncated_shard": (train("data.data_dir={truncated_shard}"), ["truncated-shard/train.bin", "size mismatch"]),
    "flipped_byte_in_shard": (train("data.data_dir={flipped_shard}"), ["flipped/val.bin", "checksum mismatch"]),
    "vocab_larger_than_model": (train("model.vocab_size=256"), ["vocab_size=256"]),
    "evaluate_truncated_checkpoint": (
        ["lit_inheritune.evaluate", "ckpt={truncated}", "tasks=[lastword]", "data_dir={data}"],
        ["truncated/checkpoints/last.ckpt is corrupt", "best.ckpt"]),
    "evaluate_unknown_task": (
        ["lit_inheritune.evaluate", "ckpt={good}", f"include_path={REPO}/tests/fixtures/lm_eval", "tasks=[arc_mni]",
         "data_dir={data}"],
        ["unknown task", "arc_mni", "did you mean arc_mini?"]),
    "export_truncated_checkpoint": (
        ["lit_inheritune.export", "ckpt={truncated}", "out={case}/hf"], ["truncated/checkpoints/last.ckpt is corrupt"]),
    "export_out_exists": (
        ["lit_inheritune.export", "ckpt={good}", "out={export_out}", "tokenizer=none"],
        ["hf-export exists and is not empty", "overwrite=true"]),
    "analyze_truncated_checkpoint": (
        ["lit_inheritune.analyze", "ckpt={truncated}", "data_dir={data}", "n_seq=2", "seq_len=8"],
        ["truncated/checkpoints/last.ckpt is corrupt"]),
    "analyze_missing_data": (
        ["lit_inheritune.analyze", "ckpt={good}", "data_dir={case}/nowhere"], ["nowhere does not exist"]),
    "report_not_a_group": (
        ["lit_inheritune.report", "{case}/outputs/nope", "--out", "{case}/report"], ["outputs/nope"]),
    "prepare_no_such_corpus": (
        ["lit_inheritune.data.prepare", "--source", "local", "--paths", "{case}/no-corpus", "--out", "{case}/d/e"],
        ["no files match", "no-corpus"]),
}


# One case per entry point (python -m lit_inheritune, .evaluate, .export, .analyze, .report, .data.prepare), run as a
# real interpreter as well as in this process. For training, a check of the Hydra callback that runs before any
# run directory exists (a second, not the ~10 s of a case that imports torch and Lightning first).
SUBPROCESS_CASES = ("negative_steps", "evaluate_unknown_task", "export_out_exists", "analyze_missing_data",
                    "report_not_a_group", "prepare_no_such_corpus")


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every directory below the roots, and every file with its size and modification time."""
    seen = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            seen[str(path)] = (path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else (-1, 0)
    return seen


def run_cli(argv: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    environ.update(LIT_INHERITUNE_ROOT=str(cwd), **env)  # outputs/ and data/ of the defaults land in cwd
    return subprocess.run([sys.executable, "-m", *argv], cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=300)


def check_bad_input(case: str, work: dict[str, Path], tmp_path: Path, run) -> None:
    argv, fragments = CASES[case]
    names = {k: str(v) for k, v in work.items()}
    argv = [a.format(case=tmp_path, **names) for a in argv]
    if argv[0] == "lit_inheritune":  # training: below this case's directory, on the prepared fixture data
        argv += [f"paths.root_dir={tmp_path}"] + ([] if any("data.data_dir" in a for a in argv)
                                                   else [f"data.data_dir={work['data']}"])
    before = snapshot(tmp_path, work["root"], work["data"])
    done = run(argv, cwd=tmp_path)

    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert snapshot(tmp_path, work["root"], work["data"]) == before  # no run, stage, data or output directory


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_error_line_exit_2_and_nothing_written(case, work, tmp_path, run_in_process):
    check_bad_input(case, work, tmp_path, run_in_process)


@pytest.mark.subprocess
@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_bad_input_through_a_real_interpreter(case, work, tmp_path):
    check_bad_input(case, work, tmp_path, run_cli)


def test_resuming_a_stage_whose_checkpoint_is_truncated_names_it_before_compute(work, tmp_path, run_in_process):
    stage = tmp_path / "outputs" / "default" / "scratch-L2-T40-s1"  # the run dir of TINY's scratch run
    shutil.copytree(work["truncated"].parent.parent, stage, ignore=shutil.ignore_patterns("config.yaml"))
    before = snapshot(tmp_path)
    done = run_in_process(train(f"paths.root_dir={tmp_path}", f"data.data_dir={work['data']}", "resume=true"),
                          tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert re.fullmatch(r"error: checkpoint \S+/scratch-L2-T40-s1/checkpoints/last.ckpt is corrupt .*; use \S+best"
                        r"\.ckpt .* or remove \S+/scratch-L2-T40-s1 to train that stage again\n", done.stderr)
    assert snapshot(tmp_path) == before


@pytest.mark.subprocess
def test_hydra_full_error_shows_the_traceback(tmp_path):
    """A real interpreter: the traceback is the interpreter's, printed for the error run_cli lets escape (this case
    fails in its first second, before torch is imported)."""
    done = run_cli(train("train.max_steps=-20"), tmp_path, HYDRA_FULL_ERROR="1")
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "ConfigError: train.max_steps=-20 must be positive" in done.stderr


def test_help_describes_the_tool_groups_experiments_and_companion_commands(tmp_path, run_in_process):
    done = run_in_process(["lit_inheritune", "--help"], tmp_path)
    assert done.returncode == 0 and not done.stderr
    text = done.stdout
    assert text.startswith("lit_inheritune: the Inheritune paper (arXiv 2404.08634)")
    for group in ("data", "experiment", "method", "model", "trainer"):
        assert re.search(rf"^{group}: \w", text, re.M), group  # every group with its options
    for experiment in ("demo", "cpu_medium_16l", "cpu_lazy_transfer", "cpu_smollm2_15l", "gpt2_medium_16l"):
        assert f"\n  {experiment} " in text, experiment
    for command in ("data.prepare", "evaluate", "analyze", "export", "report"):
        assert f"python -m lit_inheritune.{command} " in text, command
    assert "model=cpu_tiny wants data=fixture" in text
    assert not list(tmp_path.iterdir())  # --help writes nothing


def test_help_is_what_hydras_own_help_renders(tmp_path, monkeypatch, capfd, run_in_process):
    """`--help` answers without importing Hydra (__main__.app_help); it must print what Hydra's --help would."""
    import hydra

    from lit_inheritune.config import CONFIG_DIR

    @hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
    def task(cfg):
        pass

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lit_inheritune", "--help"])
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit:
        task()
    hydras = capfd.readouterr()
    assert exit.value.code == 0, hydras.err
    assert run_in_process(["lit_inheritune", "--help"], tmp_path).stdout == hydras.out


def test_every_error_class_of_the_package_is_an_expected_failure():
    """A new *Error class must be listed in errors.EXPECTED (or the CLI would print its traceback)."""
    from lit_inheritune.errors import EXPECTED

    package = REPO / "lit_inheritune"
    for path in package.rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        for name in re.findall(r"^class (\w+Error)\(", path.read_text(), re.M):
            assert name in EXPECTED.get(module, ()), f"{module}.{name} is not in lit_inheritune.errors.EXPECTED"
