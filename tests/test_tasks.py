"""The offline last-word task (lit_inheritune/tasks.py): passages really cut from the val split, deterministic,
short enough for a 128-token block, scored through lm-eval offline and through `evaluate tasks=[lastword]`."""

import json
import math
import re
import shutil

import lm_eval
import pytest
import torch
import torch.nn.functional as F
from test_evaluate import write_run

from lit_inheritune.data.prepare import load_prepared
from lit_inheritune.evaluate import GPTLM, EvaluationError, evaluate_checkpoint, task_manager
from lit_inheritune.models.gpt import GPT, GPTConfig
from lit_inheritune.tasks import TaskError, last_word_task_name, write_last_word_task
from lit_inheritune.tokenizer import load_bpe

N = 40
BLOCK_SIZE = 128
TASK = "lastword_fixture_bpe512"


def read_passages(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{TASK}.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def tokenizer(fixture_data_dir):
    return load_bpe(fixture_data_dir / "tokenizer.json")


@pytest.fixture(scope="module")
def task_dir(fixture_data_dir, tmp_path_factory):
    return write_last_word_task(fixture_data_dir, tmp_path_factory.mktemp("lastword"), n=N, seed=0)


def val_documents(data_dir, tokenizer) -> list[str]:
    """The val split decoded document by document (split at EOT), independently of the task's windows."""
    manifest, _, val = load_prepared(data_dir)
    docs, current = [], []
    for token in val.tolist():
        if token == manifest["eot_id"]:
            docs.append(tokenizer.decode(current))
            current = []
        else:
            current.append(token)
    return docs


def test_task_is_deterministic_and_every_target_ends_a_passage_of_the_val_text(
        task_dir, fixture_data_dir, tokenizer, tmp_path):
    assert last_word_task_name(fixture_data_dir) == TASK
    again = write_last_word_task(fixture_data_dir, tmp_path / "again", n=N, seed=0)
    for name in (f"{TASK}.jsonl", f"{TASK}.yaml", "local_json.py"):
        assert (again / name).read_bytes() == (task_dir / name).read_bytes()
    other_seed = write_last_word_task(fixture_data_dir, tmp_path / "seed1", n=N, seed=1)
    assert read_passages(other_seed) != read_passages(task_dir)

    passages = read_passages(task_dir)
    assert len(passages) == N
    assert len({p["context"] for p in passages}) == N
    docs = val_documents(fixture_data_dir, tokenizer)
    for p in passages:
        context, target = p["context"], p["target"]
        assert re.fullmatch(r" [A-Za-z][a-z]{2,}", target), target
        assert context and not context[-1].isspace() and not context[0].isspace()
        # verbatim val text that starts at a word and ends at a whole word (not the start of a longer one)
        assert re.search(r"(?<!\S)" + re.escape(context + target) + r"[^\w'-]", docs[p["doc"]]), (context, target)
    # in validation order: documents never go backwards
    assert [p["doc"] for p in passages] == sorted(p["doc"] for p in passages)


@pytest.mark.parametrize("context_tokens", [100, 40])
def test_passages_fit_the_token_limit(fixture_data_dir, tokenizer, tmp_path, context_tokens):
    folder = write_last_word_task(fixture_data_dir, tmp_path, n=N, context_tokens=context_tokens)
    for p in read_passages(folder):
        passage_tokens = len(tokenizer.encode(p["context"] + p["target"]))
        assert context_tokens // 2 <= len(tokenizer.encode(p["context"])) < passage_tokens <= context_tokens
    assert f"context_tokens: {context_tokens}" in (folder / f"{TASK}.yaml").read_text()


def test_existing_task_is_reused_only_for_the_same_parameters(fixture_data_dir, tmp_path):
    data = tmp_path / f"{TASK}.jsonl"
    write_last_word_task(fixture_data_dir, tmp_path, n=N)
    data.write_text(data.read_text() + "\n")  # a marker: a rebuild would drop it
    write_last_word_task(fixture_data_dir, tmp_path, n=N)
    assert data.read_text().endswith("\n\n")
    write_last_word_task(fixture_data_dir, tmp_path, n=N - 1)
    assert len(read_passages(tmp_path)) == N - 1
    assert "n: 39" in (tmp_path / f"{TASK}.yaml").read_text()


def test_lm_eval_scores_the_task_offline_as_the_models_own_greedy_and_log_probs(task_dir, tokenizer):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK_SIZE, vocab_size=512)).eval()
    manager = task_manager([TASK], include_path=str(task_dir))
    results = lm_eval.simple_evaluate(model=GPTLM(model, tokenizer, batch_size=8, device="cpu"), tasks=[TASK],
                                      task_manager=manager, bootstrap_iters=0, log_samples=False)
    scores = results["results"][TASK]
    assert results["n-samples"][TASK]["effective"] == N
    # the same numbers from one forward pass per passage (lm-eval's split: continuation = the tokens of
    # context + target after those of the context), with nothing cut from the left
    greedy, logprobs = [], []
    for p in read_passages(task_dir):
        context_ids = tokenizer.encode(p["context"])
        target_ids = tokenizer.encode(p["context"] + p["target"])[len(context_ids):]
        with torch.no_grad():
            logits = model(torch.tensor([context_ids + target_ids[:-1]]))["logits"][0]
        scored = F.log_softmax(logits.float(), dim=-1)[-len(target_ids):]
        target = torch.tensor(target_ids)
        greedy.append(bool((scored.argmax(-1) == target).all()))
        logprobs.append(scored.gather(1, target[:, None]).sum().item())
    assert 0.0 <= scores["acc,none"] <= 1.0
    assert scores["acc,none"] == pytest.approx(sum(greedy) / N)
    assert math.isfinite(scores["perplexity,none"]) and scores["perplexity,none"] > 1
    assert scores["perplexity,none"] == pytest.approx(math.exp(-sum(logprobs) / N), rel=1e-4)


def test_evaluate_builds_lastword_for_the_checkpoints_dataset_and_reuses_it(tmp_path, fixture_data_dir,
                                                                            run_in_process):
    """`python -m lit_inheritune.evaluate tasks=[lastword]`, run in this process (test_evaluate.py runs the evaluate
    CLI as a real interpreter)."""
    data_dir = tmp_path / "fixture-bpe512"  # a copy: the task is written into <data_dir>/tasks/
    shutil.copytree(fixture_data_dir, data_dir)
    ckpt = write_run(tmp_path / "runs" / "scratch-L2-s1", data_dir)
    done = run_in_process(["lit_inheritune.evaluate", f"ckpt={ckpt}", "tasks=[lastword]", f"lastword.n={N}",
                           "bootstrap_iters=0", "device=cpu", f"out={tmp_path / 'eval'}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "results.json").read_text())
    scores = report["results"][TASK]
    assert 0.0 <= scores["acc,none"] <= 1.0 and math.isfinite(scores["perplexity,none"])
    assert report["configs"][TASK]["metadata"]["n"] == N
    assert f"|{TASK}" in (tmp_path / "eval" / "results.md").read_text().replace(" ", "")
    # a second evaluation (in process) reuses the task files and scores the same passages the same way
    params = {"n": N, "context_tokens": 100, "seed": 0}
    task_yaml = data_dir / "tasks" / f"{TASK}.yaml"
    written = task_yaml.stat().st_mtime_ns
    again = evaluate_checkpoint(ckpt, ["lastword"], tmp_path / "eval2", bootstrap_iters=0, device="cpu",
                                last_word=params)
    assert task_yaml.stat().st_mtime_ns == written
    assert again["results"][TASK] == scores
    # more passages than the val split holds: one clear sentence naming the keys
    with pytest.raises(EvaluationError, match=r"usable last-word passages.*lastword\.n"):
        evaluate_checkpoint(ckpt, ["lastword"], tmp_path / "eval3", last_word={**params, "n": 100_000})


def test_missing_or_unprepared_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(TaskError, match="does not exist"):
        write_last_word_task(tmp_path / "no-such-data", tmp_path / "out")
    (tmp_path / "raw").mkdir()
    with pytest.raises(TaskError, match="no manifest.json"):
        write_last_word_task(tmp_path / "raw", tmp_path / "out")
    assert not (tmp_path / "out").exists()
