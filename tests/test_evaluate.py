"""lm-eval on our GPT: the adapter's scores against direct forward passes, offline tasks end to end, the CLI
on a checkpoint as the runner writes it, the hub error, and val/ppl as exp(summed CE / tokens)."""

import json
import math
import os
import shutil
from pathlib import Path

import lightning as L
import lm_eval
import pytest
import torch
import torch.nn.functional as F
from conftest import FIXTURES, TINY
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from lit_inheritune.config import compose
from lit_inheritune.evaluate import GPTLM, EvaluationError, evaluate_checkpoint, load_tasks, task_manager
from lit_inheritune.models.gpt import GPT, GPTConfig
from lit_inheritune.tokenizer import load_bpe
from lit_inheritune.training.lm import CausalLM
from lit_inheritune.training.optim import OptimConfig

TASKS_DIR = FIXTURES / "lm_eval"
BLOCK_SIZE = 16
LONG_TEXT = ("Full fathom five thy father lies; of his bones are coral made; those are pearls that were his "
             "eyes: nothing of him that doth fade but doth suffer a sea-change into something rich and strange.")


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK_SIZE, vocab_size=512)).eval()


@pytest.fixture(scope="module")
def tokenizer(fixture_data_dir):
    return load_bpe(fixture_data_dir / "tokenizer.json")


@pytest.fixture(scope="module")
def adapter(tokenizer):
    return GPTLM(tiny_gpt(), tokenizer, batch_size=3, device="cpu")


def requests(kind: str, *args: tuple) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=0) for a in args]


@torch.no_grad()
def forward_log_probs(model: GPT, ids: list[int]) -> torch.Tensor:
    """(len(ids), V) log-probs of the token after each position, from one unpadded forward pass."""
    return F.log_softmax(model(torch.tensor([ids]))["logits"][0].float(), dim=-1)


def expected_loglikelihood(model: GPT, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """The continuation's tokens are those of context + continuation after the context's own tokens (lm-eval's
    convention); only the last block_size + 1 tokens are kept, then every continuation token is scored."""
    context_ids = tokenizer.encode(context) if context else [tokenizer.eot_id]
    whole = tokenizer.encode(context + continuation) if context else context_ids + tokenizer.encode(continuation)
    continuation_ids = whole[len(context_ids):]
    tokens = (context_ids + continuation_ids)[-(BLOCK_SIZE + 1):]
    n = len(continuation_ids)
    scored = forward_log_probs(model, tokens[:-1])[-n:]
    target = torch.tensor(continuation_ids)
    logprob = scored.gather(1, target[:, None]).sum(dtype=torch.float64).item()
    return logprob, bool((scored.argmax(-1) == target).all())


def test_loglikelihood_is_the_models_summed_token_log_probs(adapter, tokenizer):
    pairs = [
        ("The king is", " dead"),
        ("Where the bee sucks, there suck I", " in a cowslip's bell I lie"),
        (LONG_TEXT, " Ding-dong, bell."),  # context + continuation > block_size: the context is cut on the left
        ("", "Hark, hark!"),  # empty context: conditioned on EOT
        ("Come unto these yellow sands ", "and then take hands"),  # trailing space moves to the continuation
    ]
    assert len(tokenizer.encode(LONG_TEXT)) > 3 * BLOCK_SIZE
    got = adapter.loglikelihood(requests("loglikelihood", *pairs), disable_tqdm=True)
    for (context, continuation), (logprob, is_greedy) in zip(pairs, got, strict=True):
        want_logprob, want_greedy = expected_loglikelihood(adapter.model, tokenizer, context.rstrip(" "),
                                                           context[len(context.rstrip(" ")):] + continuation)
        assert logprob == pytest.approx(want_logprob, abs=1e-5), (context, continuation)
        assert is_greedy == want_greedy


def test_is_greedy_exactly_when_every_continuation_token_is_the_argmax(adapter, tokenizer):
    context = tokenizer.encode(LONG_TEXT)  # longer than block_size, so greedy decoding sees a cut context
    greedy = []
    for _ in range(5):
        greedy.append(int(forward_log_probs(adapter.model, (context + greedy)[-BLOCK_SIZE:])[-1].argmax()))
    not_greedy = greedy[:2] + [(greedy[2] + 1) % 512] + greedy[3:]
    results = adapter._loglikelihood_tokens([(None, context, greedy), (None, context, not_greedy)])
    assert [is_greedy for _, is_greedy in results] == [True, False]
    assert results[0][0] > results[1][0]


def test_loglikelihood_rolling_sums_disjoint_windows_with_full_context(adapter, tokenizer):
    tokens = tokenizer.encode(LONG_TEXT)
    stream = [tokenizer.eot_id] + tokens  # tokens[j] is predicted from stream[: j + 1]
    expected, predicted = 0.0, 0
    while predicted < len(tokens):  # each window predicts up to block_size new tokens from a full window
        end = min(predicted + BLOCK_SIZE, len(tokens))
        window = stream[max(0, end - BLOCK_SIZE):end]
        scored = forward_log_probs(adapter.model, window)[-(end - predicted):]
        target = torch.tensor(tokens[predicted:end])
        expected += scored.gather(1, target[:, None]).sum(dtype=torch.float64).item()
        predicted = end
    short = "Ariel sings."
    got = adapter.loglikelihood_rolling(requests("loglikelihood_rolling", (LONG_TEXT,), (short,)))
    assert got[0] == pytest.approx(expected, abs=1e-5)
    assert got[1] == pytest.approx(expected_loglikelihood(adapter.model, tokenizer, "", short)[0], abs=1e-5)


def test_generate_until_is_greedy_and_stops_at_a_stop_string(adapter, tokenizer):
    context = "Full fathom five"
    ids = tokenizer.encode(context)
    greedy = []
    for _ in range(6):
        logits = forward_log_probs(adapter.model, (ids + greedy)[-BLOCK_SIZE:])[-1, : tokenizer.vocab_size]
        greedy.append(int(logits.argmax()))
    full = tokenizer.decode(greedy)
    [unbounded] = adapter.generate_until(requests("generate_until", (context, {"max_gen_toks": 6})))
    assert unbounded == full
    stop = full[len(full) // 2:][:2]
    assert stop
    [stopped] = adapter.generate_until(requests("generate_until", (context, {"until": stop, "max_gen_toks": 6})))
    assert stopped == full.split(stop)[0]


def test_local_tasks_evaluate_offline_end_to_end(adapter, tokenizer):
    manager = task_manager(["arc_mini", "lambada_mini"], include_path=str(TASKS_DIR))
    results = lm_eval.simple_evaluate(model=adapter, tasks=["arc_mini", "lambada_mini"], task_manager=manager,
                                      bootstrap_iters=0, log_samples=False)
    arc, lambada = results["results"]["arc_mini"], results["results"]["lambada_mini"]
    assert 0.0 <= arc["acc,none"] <= 1.0 and 0.0 <= lambada["acc,none"] <= 1.0
    assert results["n-samples"]["arc_mini"]["effective"] == 10
    assert results["n-samples"]["lambada_mini"]["effective"] == 8
    # acc is the share of questions whose gold choice our own scoring ranks first
    correct = 0
    for line in (TASKS_DIR / "arc_mini.jsonl").read_text().splitlines():
        doc = json.loads(line)
        prompt = f"Question: {doc['question']}\nAnswer:"
        scores = [expected_loglikelihood(adapter.model, tokenizer, prompt, " " + choice)[0]
                  for choice in doc["choices"]["text"]]
        correct += scores.index(max(scores)) == doc["choices"]["label"].index(doc["answerKey"])
    assert arc["acc,none"] == pytest.approx(correct / 10)
    # LAMBADA's perplexity is exp(-mean last-word log-likelihood); a random 512-token model is far from certain
    assert lambada["perplexity,none"] > 10


def write_run(stage_dir: Path, data_dir: Path) -> Path:
    """A stage directory as the runner leaves it: config.yaml (resolved) and checkpoints/last.ckpt, whose
    state_dict and hyper_parameters are those of a CausalLM."""
    cfg = compose([*TINY, f"paths.root_dir={stage_dir.parent}", f"data.data_dir={data_dir}"])
    stage_dir.mkdir(parents=True)
    OmegaConf.save(cfg, stage_dir / "config.yaml", resolve=True)
    module = CausalLM(tiny_gpt(), OptimConfig(), meta={"stage": "scratch"})
    ckpt = stage_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, ckpt)
    return ckpt


def test_cli_evaluates_a_run_checkpoint_with_its_datasets_tokenizer(tmp_path, fixture_data_dir, run_in_process):
    """`python -m lit_inheritune.evaluate`, run in this process (conftest.run_in_process; test_cli_errors.py runs
    the evaluate CLI as a real interpreter)."""
    # data_dir is found through the run's config.yaml, its manifest names the BPE, and the tasks are local
    ckpt = write_run(tmp_path / "runs" / "scratch-L2-s1", fixture_data_dir)
    done = run_in_process(["lit_inheritune.evaluate", f"ckpt={ckpt}", f"include_path={TASKS_DIR}",
                           "tasks=[arc_mini,lambada_mini]", "bootstrap_iters=0", "batch_size=4", "device=cpu"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "runs" / "scratch-L2-s1" / "eval"  # default: next to checkpoints/
    report = json.loads((out / "results.json").read_text())
    assert set(report["results"]) == {"arc_mini", "lambada_mini"}
    assert 0.0 <= report["results"]["arc_mini"]["acc,none"] <= 1.0
    assert report["provenance"]["commit"] and "lit_inheritune.evaluate" in report["provenance"]["command"]
    assert "bpe512" in report["tokenizer"]
    table = (out / "results.md").read_text()
    assert "- commit:" in table and "|arc_mini" in table.replace(" ", "")


def test_hub_task_on_an_offline_machine_fails_in_one_sentence(tmp_path, fixture_data_dir):
    # lm-eval's own arc_easy.yaml, indexed alone (the full index of built-in tasks takes half a minute here)
    hub_tasks = tmp_path / "hub_tasks"
    hub_tasks.mkdir()
    shutil.copy(Path(lm_eval.__file__).parent / "tasks" / "arc" / "arc_easy.yaml", hub_tasks)
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"  # conftest: fails at once instead of retrying the network
    with pytest.raises(EvaluationError) as failure:
        load_tasks(["arc_easy"], task_manager(["arc_easy"], include_path=str(hub_tasks)))
    message = str(failure.value)
    assert "task 'arc_easy'" in message and "no hub access" in message and "include_path=" in message
    assert "\n" not in message
    local_only = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    with pytest.raises(EvaluationError, match="unknown task 'no_such_task'"):
        load_tasks(["no_such_task"], local_only)
    # the full path from a checkpoint stops there too, before any scoring or output
    ckpt = write_run(tmp_path / "runs" / "s1", fixture_data_dir)
    with pytest.raises(EvaluationError, match="no hub access"):
        evaluate_checkpoint(ckpt, ["arc_easy"], tmp_path / "out", include_path=str(hub_tasks))
    assert not (tmp_path / "out").exists()


def test_tokenizer_that_cannot_be_found_is_a_clear_error(tmp_path):
    ckpt = tmp_path / "lonely" / "last.ckpt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": {}, "hyper_parameters": {}}, ckpt)
    with pytest.raises(EvaluationError, match="pass data_dir=DIR"):
        evaluate_checkpoint(ckpt, ["arc_mini"], tmp_path / "out", include_path=str(TASKS_DIR))


def test_val_ppl_is_exp_of_summed_cross_entropy_over_all_tokens():
    """5 windows in batches of 2 (the last one smaller): val/ppl = exp(total CE / total tokens), not a mean of
    per-batch values."""
    model = tiny_gpt(1)
    with torch.no_grad():
        model.transformer.wte.weight.mul_(30)  # peaked predictions, so windows' losses differ a lot
    module = CausalLM(model, OptimConfig())
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 512, (5, BLOCK_SIZE), generator=g)
    y = torch.randint(0, 512, (5, BLOCK_SIZE), generator=g)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    [metrics] = trainer.validate(module, DataLoader(TensorDataset(x, y), batch_size=2), verbose=False)

    with torch.no_grad():
        logits = model(x)["logits"]
        token_ce = F.cross_entropy(logits.reshape(-1, 512), y.reshape(-1), reduction="none").double()
    expected_loss = (token_ce.sum() / token_ce.numel()).item()
    batch_means = [token_ce.view(5, -1)[i:i + 2].mean().item() for i in range(0, 5, 2)]
    assert abs(expected_loss - sum(batch_means) / 3) > 1e-2  # the two definitions really differ here
    assert metrics["val/loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert metrics["val/ppl"] == pytest.approx(math.exp(expected_loss), rel=1e-5)
