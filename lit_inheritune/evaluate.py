"""`python -m lit_inheritune.evaluate ckpt=PATH tasks=[...]`: lm-eval downstream tasks on our checkpoints.

`GPTLM` puts an in-memory model (our GPT, or one of another family: lit_inheritune/models) and one of our
tokenizers behind lm-eval's `TemplateLM`, so `lm_eval.simple_evaluate(model=GPTLM(model, tokenizer), tasks=...)`
scores it like lm-eval's `hf` model scores a Hugging Face one: log-likelihoods in length-sorted batches with the
context cut from the left to the model's block size, disjoint rolling windows for perplexity tasks, greedy
generation.

The CLI finds the checkpoint's tokenizer offline (the manifest of the dataset its run trained on) and
writes results.json (lm-eval's results plus provenance) and results.md to `out`. The reserved task name
`lastword` is a LAMBADA-style task cut from that dataset's own val split (lit_inheritune/tasks.py), built
once under <data_dir>/tasks/. See lit_inheritune/conf/evaluate.yaml for the keys.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from lm_eval import utils as lm_eval_utils
from lm_eval.api.model import TemplateLM
from omegaconf import DictConfig, OmegaConf

from lit_inheritune.config import CONFIG_DIR
from lit_inheritune.errors import cli_errors, run_cli
from lit_inheritune.tokenizer import Tokenizer

# Downstream tasks for the paper's models, as lm-eval names them (paper/tables.yaml: wikitext, LAMBADA).
PAPER_TASKS = ("arc_easy", "lambada_openai", "sciq", "hellaswag", "piqa", "wikitext")
# Stands for the last-word task of the checkpoint's own dataset (`tasks.write_last_word_task`).
LAST_WORD_TASK = "lastword"
# The model family of the pretrained models `hf=NAME` names (conf/evaluate.yaml).
PRETRAINED_FAMILY = "hf"


class EvaluationError(ValueError):
    """An evaluation request that cannot work (no tokenizer, unknown task, data out of reach)."""


class GPTLM(TemplateLM):
    """lm-eval's view of our GPT. Log-probabilities are over the model's whole (padded) vocabulary, as in
    training; generation only ever picks ids the tokenizer can decode."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, batch_size: int = 16, device: str | None = None):
        super().__init__()
        if tokenizer.vocab_size > model.config.vocab_size:
            raise EvaluationError(f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} ids but the model's "
                                  f"vocab_size is {model.config.vocab_size}; this is not the model's tokenizer")
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.max_length = model.config.block_size

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eot_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(tokens)

    def get_model_info(self) -> dict:
        """Shown in lm-eval's results["config"]."""
        return {"model_config": self.model.config.to_dict(), "model_num_parameters": self.model.num_params(),
                "tokenizer": self.tokenizer.name}

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: ((context, continuation) or None, context ids, continuation ids). Returns, in request
        order, (sum of the continuation's log-probs, whether greedy decoding would produce it)."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        inputs = {}
        for i, (_, context, continuation) in enumerate(requests):
            if not continuation:
                results[i] = (0.0, True)
                continue
            if len(continuation) > self.max_length:
                raise EvaluationError(f"a continuation of {len(continuation)} tokens does not fit the model's "
                                      f"block_size={self.max_length}")
            # The model predicts token t from tokens < t: feed all but the last, cut from the left to fit.
            tokens = (context or [self.prefix_token_id]) + continuation
            inputs[i] = tokens[-(self.max_length + 1):-1]
        # Longest first, so similar lengths share a batch and too large a batch fails at once.
        order = sorted(inputs, key=lambda i: -len(inputs[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            # Right padding: causal attention keeps every real position blind to the pads after it.
            idx = torch.zeros(len(batch), len(inputs[batch[0]]), dtype=torch.long)
            for row, i in enumerate(batch):
                idx[row, :len(inputs[i])] = torch.tensor(inputs[i])
            log_probs = F.log_softmax(self.model(idx.to(self.device))["logits"].float(), dim=-1).cpu()
            for row, i in enumerate(batch):
                key, _, continuation = requests[i]
                end, target = len(inputs[i]), torch.tensor(continuation)
                scored = log_probs[row, end - len(target):end]  # (n, V): positions predicting the continuation
                logprob = float(scored.gather(1, target[:, None]).sum(dtype=torch.float64))
                results[i] = (logprob, bool((scored.argmax(dim=-1) == target).all()))
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, results[i])
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's total log-likelihood over disjoint windows of at most block_size predicted tokens
        (lm-eval's rolling windows: the first conditions on EOT, each later one on the token before it)."""
        windows, owner = [], []
        for i, request in enumerate(requests):
            (text,) = request.args
            rolling = lm_eval_utils.get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)
            for context, continuation in map(lm_eval_utils.make_disjoint_window, rolling):
                windows.append((None, context, continuation))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows)):
            totals[i] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy decoding, one request at a time, until EOT, a stop string or `max_gen_toks` new tokens.
        Sampling arguments (do_sample, temperature) are ignored: the paper's tasks score log-likelihoods."""
        outputs = []
        for request in requests:
            context, gen_kwargs = request.args
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_gen_toks = int(gen_kwargs.get("max_gen_toks", 256))
            tokens = self.tok_encode(context) or [self.prefix_token_id]
            generated: list[int] = []
            text = ""
            while len(generated) < max_gen_toks:
                window = torch.tensor([(tokens + generated)[-self.max_length:]], device=self.device)
                logits = self.model(window)["logits"][0, -1, : self.tokenizer.vocab_size]
                next_id = int(logits.argmax())
                if next_id == self.eot_token_id:
                    break
                generated.append(next_id)
                text = self.tok_decode(generated)
                if any(stop in text for stop in until):
                    break
            for stop in until:
                text = text.split(stop)[0]
            self.cache_hook.add_partial("generate_until", request.args, text)
            outputs.append(text)
        return outputs


# --------------------------------------------------------------------------------------------------------------
# Checkpoints, tokenizers and tasks, offline


def resolve_tokenizer(ckpt: str | Path, tokenizer: str = "auto", data_dir: str | Path | None = None) -> Tokenizer:
    """The tokenizer the checkpoint was trained with (`runs.checkpoint_tokenizer`); never touches the network."""
    from lit_inheritune.runs import checkpoint_tokenizer
    from lit_inheritune.tokenizer import TokenizerError

    try:
        return checkpoint_tokenizer(ckpt, tokenizer, data_dir)
    except TokenizerError as e:
        raise EvaluationError(str(e)) from None


def last_word_task(ckpt: str | Path, data_dir: str | Path | None = None, **params) -> tuple[str, Path]:
    """(task name, folder) of the last-word task of the dataset the checkpoint trained on (`data_dir`, else
    data.data_dir of its run's config.yaml), written to <data_dir>/tasks/ unless already there."""
    from lit_inheritune.runs import checkpoint_data_dir, run_dir_of
    from lit_inheritune.tasks import TaskError, last_word_task_name, write_last_word_task

    data_dir = data_dir or checkpoint_data_dir(ckpt)
    if not data_dir:
        raise EvaluationError(f"task {LAST_WORD_TASK!r} is built from the checkpoint's dataset, but there is no run "
                              f"config {run_dir_of(ckpt) / 'config.yaml'} naming it; pass data_dir=DIR "
                              "(the prepared dataset)")
    try:
        folder = write_last_word_task(data_dir, Path(data_dir) / "tasks", **params)
    except TaskError as e:
        raise EvaluationError(f"{e} (keys: lastword.n, lastword.context_tokens, lastword.seed)") from None
    return last_word_task_name(data_dir), folder


def task_manager(task_names: Sequence[str], include_path: str | Sequence[str] | None = None):
    """A TaskManager that indexes lm-eval's ~200 built-in task folders (half a minute on 2 CPU cores) only
    when some task is not among the local YAMLs in `include_path`."""
    from lm_eval.tasks import TaskManager

    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(name in local.all_tasks for name in task_names):
            return local
    return TaskManager(include_path=include_path)


def _lm_eval_words() -> set[str]:
    """Every word in lm-eval's task YAMLs (a second on 2 cores; its task index takes ~20 s)."""
    import re
    from importlib.util import find_spec

    root = Path(find_spec("lm_eval").submodule_search_locations[0]) / "tasks"
    words: set[str] = set()
    for path in root.rglob("*.yaml"):
        words.update(re.findall(r"[\w.-]+", path.read_text(encoding="utf-8", errors="ignore")))
    return words


def check_task_names(task_names: Sequence[str], include_path: str | Sequence[str] | None = None) -> None:
    """Refuse, before any model is loaded, a task that is neither in `include_path` nor named anywhere in
    lm-eval's task YAMLs (a typo, usually). A name that is there may still fail later, in `load_tasks`."""
    import difflib

    from lm_eval.tasks import TaskManager

    paths = [include_path] if isinstance(include_path, str) else list(include_path or [])
    for path in paths:
        if not Path(path).is_dir():
            raise EvaluationError(f"include_path={path}: no such directory of task YAMLs")
    local = set(TaskManager(include_path=paths, include_defaults=False).all_tasks) if paths else set()
    names = [n for n in task_names if n != LAST_WORD_TASK and n not in local and not Path(n).is_file()]
    unknown = [n for n in names if n not in _lm_eval_words()] if names else []
    if unknown:
        known = sorted(local | {*PAPER_TASKS, LAST_WORD_TASK})
        hints = {n: difflib.get_close_matches(n, known, n=1) for n in unknown}
        hint = "; ".join(f"did you mean {m[0]}?" for m in hints.values() if m)
        raise EvaluationError(f"unknown task(s) {unknown} (tasks=): neither an lm-eval task nor a task in "
                              f"include_path={paths or None}" + (f"; {hint}" if hint else ""))


def load_tasks(task_names: Sequence[str], manager) -> list:
    """Build each task (which loads its data) on its own, so a dataset out of reach is reported with the task
    that needs it. Returns Task and Group objects for `simple_evaluate(tasks=...)`."""
    built = []
    for name in task_names:
        if name not in manager.all_tasks and not Path(name).is_file():  # lm-eval also takes a YAML's path
            raise EvaluationError(f"unknown task {name!r}: neither an lm-eval task nor a task in "
                                  f"include_path={manager.include_path}")
        try:
            loaded = manager.load([name])
        except ConnectionError as e:  # what datasets raises when the hub is offline or unreachable
            raise EvaluationError(
                f"task {name!r} loads its data from the Hugging Face hub and this machine has no hub access "
                f"({e}); evaluate local task YAMLs instead with include_path=DIR tasks=[...], e.g. "
                "include_path=tests/fixtures/lm_eval tasks=[arc_mini,lambada_mini]") from None
        groups = loaded.get("groups") or {}
        built.extend([groups[name]] if name in groups else loaded["tasks"].values())
    return built


def results_markdown(report: dict) -> str:
    from lm_eval.utils import make_table

    prov = report["provenance"]
    lines = [
        f"# lm-eval: {report['ckpt']}",
        "",
        f"- tokenizer: {report['tokenizer']}",
        f"- command: `{prov['command']}`",
        f"- commit: {prov['commit']}",
        f"- hardware: {prov['hardware']}",
        f"- date: {prov['date']}",
        "",
        make_table(report),
    ]
    if report.get("groups"):
        lines += ["", make_table(report, "groups")]
    return "\n".join(lines)


def evaluate_checkpoint(
    ckpt: str | Path,
    tasks: Sequence[str],
    out: str | Path,
    include_path: str | Sequence[str] | None = None,
    tokenizer: str = "auto",
    data_dir: str | Path | None = None,
    batch_size: int = 16,
    device: str | None = None,
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    bootstrap_iters: int = 100000,
    last_word: dict | None = None,
    pretrained: dict | None = None,
) -> dict:
    """Evaluate one of our checkpoints, or with `pretrained` = {path, gguf_file, cache_dir} a pretrained model
    (`pretrained_model`) with its own tokenizer (e.g. the reference an HF Inheritune run matched), on lm-eval
    tasks; write out/results.json and out/results.md. `last_word`: n, context_tokens, seed of the `lastword` task."""
    import lm_eval

    from lit_inheritune.provenance import provenance

    if not tasks:
        raise EvaluationError(f"no tasks given: pass tasks=[...], e.g. tasks=[{','.join(PAPER_TASKS)}]")
    check_task_names(tasks, include_path)
    if pretrained:
        if LAST_WORD_TASK in tasks and not data_dir:
            raise EvaluationError(f"task {LAST_WORD_TASK!r} is built from a prepared dataset's val split; with "
                                  "hf=... pass data_dir=DIR (one tokenized with the model's own tokenizer)")
        model, tok, ckpt = pretrained_model(pretrained["path"], pretrained.get("gguf_file"),
                                            pretrained.get("cache_dir"))
    else:
        model, tok = checkpoint_model(ckpt, tokenizer, data_dir)
    lm = GPTLM(model, tok, batch_size=batch_size, device=device)
    if LAST_WORD_TASK in tasks:
        name, folder = last_word_task(ckpt, data_dir, **(last_word or {}))
        tasks = [name if task == LAST_WORD_TASK else task for task in tasks]
        include_path = [include_path] if isinstance(include_path, str) else list(include_path or [])
        include_path.append(str(folder))
    manager = task_manager(tasks, include_path)
    results = lm_eval.simple_evaluate(
        model=lm, tasks=load_tasks(tasks, manager), task_manager=manager, num_fewshot=num_fewshot,
        limit=limit, bootstrap_iters=bootstrap_iters, log_samples=False,
    )
    report = {"provenance": provenance(), "ckpt": str(ckpt), "tokenizer": repr(tok), **results}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # default=str: task configs hold functions (process_docs, custom datasets) that JSON cannot.
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    (out / "results.md").write_text(results_markdown(report) + "\n", encoding="utf-8")
    return report


def checkpoint_model(ckpt: str | Path, tokenizer: str = "auto", data_dir=None) -> tuple[torch.nn.Module, Tokenizer]:
    """The model in one of our checkpoints and the tokenizer its run trained with."""
    from lit_inheritune.models import SurgeryError, load_checkpoint
    from lit_inheritune.runs import checkpoint_config

    if not Path(ckpt).is_file():
        raise EvaluationError(f"checkpoint {ckpt} not found")
    tok = resolve_tokenizer(ckpt, tokenizer, data_dir)
    checkpoint_config(ckpt)  # CheckpointError naming a corrupt (e.g. truncated) or foreign file
    try:
        return load_checkpoint(ckpt), tok
    except SurgeryError as e:
        raise EvaluationError(str(e)) from None


def pretrained_model(path: str, gguf_file: str | None = None, cache_dir=None, family: str = PRETRAINED_FAMILY):
    """A pretrained model of `family` (for hf: an alias such as smollm2, a local dir, a GGUF file or a hub id), its
    own tokenizer, and where it came from (the alias resolved; what results.json records as the model)."""
    from lit_inheritune.models import ModelLoadError
    from lit_inheritune.models import family as model_family

    try:
        model, tok, source = model_family(family).pretrained_model(path, gguf_file, cache_dir)
    except ModelLoadError as e:
        raise EvaluationError(str(e)) from None
    path, gguf_file = source["path"], source["gguf_file"]
    return model, tok, f"{path}/{gguf_file}" if gguf_file else path


def _default_out_dir(ckpt, pretrained=None) -> str:
    from lit_inheritune.runs import run_dir_of

    if pretrained and not ckpt:
        root = Path(os.environ.get("LIT_INHERITUNE_ROOT", "."))
        return str(root / "outputs" / "eval" / Path(str(pretrained)).name)
    return str(run_dir_of(ckpt) / "eval") if ckpt else "eval"


if not OmegaConf.has_resolver("eval_dir"):
    OmegaConf.register_new_resolver("eval_dir", _default_out_dir)


@hydra.main(config_path=str(CONFIG_DIR), config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    with cli_errors():
        if bool(cfg.ckpt) == bool(cfg.hf):
            raise EvaluationError("pass one model: ckpt=PATH (e.g. <run dir>/checkpoints/last.ckpt) or hf=NAME "
                                  "(a pretrained Hugging Face model, e.g. hf=smollm2)")
        # tasks=arc_easy and tasks=[arc_easy,piqa] both work; so do one include_path or a list of them.
        tasks = [str(t) for t in cfg.tasks] if OmegaConf.is_list(cfg.tasks) else [str(cfg.tasks)]
        include_path = cfg.include_path
        if OmegaConf.is_list(include_path):
            include_path = [str(p) for p in include_path]
        report = evaluate_checkpoint(
            cfg.ckpt,
            tasks,
            cfg.out,
            include_path=include_path,
            tokenizer=cfg.tokenizer,
            data_dir=cfg.data_dir,
            batch_size=cfg.batch_size,
            device=cfg.device,
            num_fewshot=cfg.num_fewshot,
            limit=cfg.limit,
            bootstrap_iters=cfg.bootstrap_iters,
            last_word=OmegaConf.to_container(cfg.lastword),
            pretrained={"path": str(cfg.hf), "gguf_file": cfg.hf_gguf_file, "cache_dir": cfg.hf_cache_dir}
            if cfg.hf else None,
        )
    print(results_markdown(report))
    print(f"wrote {Path(cfg.out).resolve()}/results.json and results.md")
    return report


if __name__ == "__main__":
    run_cli(main)
