"""An offline LAMBADA-style task from a prepared dataset's own validation split.

LAMBADA (the paper's downstream column) asks for the last word of a passage; its data is on the Hugging Face
hub, out of reach here, and its 1960s-2000s fiction is far from what the CPU-scale models read. Passages cut
from the validation documents they never trained on give the same measurement, in their own domain:

- the val tokens are split into documents at EOT, and each document into disjoint windows of `context_tokens`
  tokens; a window is decoded with the dataset's tokenizer, its first (possibly cut) word dropped;
- the passage ends at the last whole word in the window that is an ordinary word of 3+ letters (optionally
  capitalised, so not a speaker label such as QUINCE; not a roman numeral) preceded by a space; context = the
  text before that space, target = " " + word, exactly as lm-eval's lambada_openai splits a passage;
- `n` windows are drawn at random (seeded) and kept in validation order.

`write_last_word_task` writes `<out_dir>/<task>.jsonl`, the task YAML (loglikelihood; acc = the target is the
greedy continuation, perplexity = exp(-mean target log-likelihood)) and the `local_json.py` loader it names, so
`include_path=<out_dir> tasks=[<task>]` runs with no network. `python -m lit_inheritune.evaluate tasks=[lastword]`
builds it for the checkpoint's dataset under `<data_dir>/tasks/`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from lit_inheritune.data.prepare import DataError, load_prepared
from lit_inheritune.io import write_text_atomic
from lit_inheritune.tokenizer import Tokenizer, TokenizerError, load_tokenizer

# Bump when the passages a given (dataset, n, context_tokens, seed) yields change, so old files are rebuilt.
TASK_VERSION = 1
TASK_PREFIX = "lastword"
# A target: a space, then an ordinary word of 3+ letters, after a non-space character and before a space or
# punctuation, so it is whole (not cut by the window, not part of "man's" or "wedding-day").
LAST_WORD = re.compile(r"(?<=\S) ([A-Za-z][a-z]{2,})(?=[\s.,;:!?)\]\"”])")
# Chapter and verse numbers ("xiv", "lxx") look like words but are not ones to predict (nor is "mix", rarely).
ROMAN_NUMERAL = re.compile(r"m*(c[md]|d?c{0,3})(x[cl]|l?x{0,3})(i[xv]|v?i{0,3})")
LEADING_PARTIAL_WORD = re.compile(r"\S*\s+")

# `custom_dataset` for the task YAML: `dataset_path: json` alone would resolve the data file against the working
# directory; this resolves it next to the YAML (as tests/fixtures/lm_eval/local_json.py does).
LOCAL_JSON_PY = '''\
"""`custom_dataset` for the task YAMLs in this folder: the `json` builder on files named relative to it.
Written by lit_inheritune.tasks."""

from pathlib import Path


def load(data_files: dict[str, str], **_metadata):
    import datasets

    here = Path(__file__).parent
    files = {split: str(here / name) for split, name in data_files.items()}
    return datasets.load_dataset("json", data_files=files)
'''


class TaskError(ValueError):
    """A task that cannot be built from the given dataset (not prepared, too little validation text)."""


def last_word_task_name(data_dir: str | Path) -> str:
    """`lastword_<dataset folder>` in lm-eval's spelling: data/embedded-bpe4096 -> lastword_embedded_bpe4096."""
    dataset = re.sub(r"[^0-9a-z]+", "_", Path(data_dir).resolve().name.lower()).strip("_")
    return f"{TASK_PREFIX}_{dataset}"


def last_word_passage(tokenizer: Tokenizer, window: np.ndarray, at_doc_start: bool,
                      context_tokens: int) -> tuple[str, str] | None:
    """(context, " " + word) ending at the last usable word of one window of val tokens, or None. The passage
    must re-encode to at most `context_tokens` tokens and its context to at least half that."""
    text = tokenizer.decode(window.tolist())
    if not at_doc_start:  # the window may open inside a word, even inside a UTF-8 character
        match = LEADING_PARTIAL_WORD.match(text)
        text = text[match.end():] if match else ""
    text = text.lstrip()
    words = [m for m in LAST_WORD.finditer(text) if not ROMAN_NUMERAL.fullmatch(m.group(1).lower())]
    if not words:
        return None
    context, target = text[:words[-1].start()], " " + words[-1].group(1)
    if len(tokenizer.encode(context + target)) > context_tokens:
        return None
    if len(tokenizer.encode(context)) < context_tokens // 2:
        return None
    return context, target


def last_word_passages(data_dir: str | Path, n: int, context_tokens: int, seed: int) -> list[dict]:
    """`n` passages {"context", "target", "doc"} (doc: index of the val document), in validation order."""
    manifest, _, val = _open_dataset(data_dir)
    tokenizer = _dataset_tokenizer(data_dir, manifest)
    boundaries = np.flatnonzero(val == manifest["eot_id"])
    starts = [0, *(boundaries + 1).tolist()]
    stops = [*boundaries.tolist(), len(val)]
    windows = [(doc, start, min(start + context_tokens, stop))
               for doc, (first, stop) in enumerate(zip(starts, stops))
               for start in range(first, stop, context_tokens)]
    chosen, seen = [], set()
    for i in np.random.default_rng(seed).permutation(len(windows)):
        doc, start, stop = windows[i]
        passage = last_word_passage(tokenizer, val[start:stop], start == starts[doc], context_tokens)
        if passage is None or passage in seen:  # repeated text (refrains, verses) would count twice
            continue
        seen.add(passage)
        chosen.append((start, {"context": passage[0], "target": passage[1], "doc": doc}))
        if len(chosen) == n:
            break
    if len(chosen) < n:
        n_docs = manifest["splits"]["val"]["docs"]
        raise TaskError(
            f"the val split of {data_dir} ({len(val):,} tokens, {n_docs} documents) has only {len(chosen)} usable "
            f"last-word passages of <= {context_tokens} tokens, fewer than n={n}; ask for n <= {len(chosen)} or "
            "prepare the data with a larger val_fraction")
    return [record for _, record in sorted(chosen, key=lambda pair: pair[0])]


def write_last_word_task(data_dir: str | Path, out_dir: str | Path, n: int = 500, context_tokens: int = 100,
                         seed: int = 0) -> Path:
    """Write the last-word task of `data_dir` (jsonl, task YAML, loader) to `out_dir` and return `out_dir`.

    `context_tokens` bounds a whole passage, context and target, in the dataset's tokenizer, so a model with
    that block size sees every context whole. Files already there for the same dataset and parameters are
    reused as they are; the YAML, written last, records the parameters and so marks a complete task.
    """
    if n < 1 or context_tokens < 8:
        raise TaskError(f"a last-word task needs n >= 1 and context_tokens >= 8, got n={n}, "
                        f"context_tokens={context_tokens}")
    manifest, _, _ = _open_dataset(data_dir)
    name = last_word_task_name(data_dir)
    out_dir = Path(out_dir)
    yaml_path, data_path = out_dir / f"{name}.yaml", out_dir / f"{name}.jsonl"
    task_yaml = _task_yaml(name, data_path.name, Path(data_dir).resolve().name,
                           manifest["splits"]["val"]["sha256"], n, context_tokens, seed)
    loader_path = out_dir / "local_json.py"
    if (yaml_path.is_file() and yaml_path.read_text(encoding="utf-8") == task_yaml and data_path.is_file()
            and loader_path.is_file()):
        return out_dir
    passages = last_word_passages(data_dir, n, context_tokens, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(data_path, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in passages))
    write_text_atomic(loader_path, LOCAL_JSON_PY)
    write_text_atomic(yaml_path, task_yaml)
    return out_dir


def _open_dataset(data_dir: str | Path) -> tuple[dict, np.ndarray, np.ndarray]:
    try:  # no checksums: train.bin can be gigabytes, and the task records the val shard's sha256 instead
        return load_prepared(data_dir, verify_checksum=False)
    except DataError as e:
        raise TaskError(f"cannot build a last-word task: {e}") from None


def _dataset_tokenizer(data_dir: str | Path, manifest: dict) -> Tokenizer:
    try:
        return load_tokenizer(manifest["tokenizer"], Path(data_dir))
    except TokenizerError as e:
        raise TaskError(f"cannot build a last-word task: {e}") from None


def _task_yaml(name: str, data_file: str, dataset: str, val_sha256: str, n: int, context_tokens: int,
               seed: int) -> str:
    """lambada_openai's output type and metrics (lm_eval/tasks/lambada/lambada_openai.yaml) over our passages;
    the metadata pins what the passages were built from (lm-eval copies it into results.json)."""
    return f"""\
# Last-word prediction (LAMBADA-style) on {n} passages of the val split of {dataset}, written by
# lit_inheritune.tasks.write_last_word_task; rewritten whenever the metadata below would change.
task: {name}
dataset_path: json
custom_dataset: !function local_json.load
dataset_kwargs:
  data_files:
    test: {data_file}
output_type: loglikelihood
test_split: test
doc_to_text: context
doc_to_target: target
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: {TASK_VERSION}.0
  dataset: {json.dumps(dataset)}
  val_sha256: {val_sha256}
  n: {n}
  context_tokens: {context_tokens}
  seed: {seed}
"""
