"""The optimizer's parameter groups and the learning-rate schedule (PAPER.md section 3)."""

import math

import lightning as L
import pytest
import torch

from lit_inheritune.models.gpt import GPT, GPTConfig
from lit_inheritune.training.optim import OptimConfig, WarmupCosine, build_optimizer


def _groups(model):
    optimizer, _ = build_optimizer(model, OptimConfig(weight_decay=0.1))
    names = {id(p): n for n, p in model.named_parameters()}
    by_decay = {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in optimizer.param_groups}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    return by_decay[0.1], by_decay[0.0]


def test_gpt_decays_linear_weights_only():
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=32))
    decay, no_decay = _groups(model)
    assert decay == {f"transformer.h.{i}.{m}.weight" for i in range(2)
                     for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    # the tied head is the token embedding: no decay, like the position embedding and every norm
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight",
            "transformer.h.0.ln_1.weight", "transformer.h.1.ln_2.weight"} <= no_decay


@pytest.mark.parametrize("tie", [True, False])
def test_hf_llama_decays_linear_weights_only(tie):
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=16, intermediate_size=32,
                                         num_attention_heads=2, num_key_value_heads=1, vocab_size=40,
                                         max_position_embeddings=16, tie_word_embeddings=tie))
    decay, no_decay = _groups(model)
    projections = {f"model.layers.{i}.{m}.weight" for i in range(2) for m in
                   ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    # an untied head is a Linear of its own and decays; a tied one is the embedding and does not
    assert decay == projections | (set() if tie else {"lm_head.weight"})
    assert "model.embed_tokens.weight" in no_decay and "model.norm.weight" in no_decay


def test_hf_gpt2_conv1d_weights_decay():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=8))
    decay, no_decay = _groups(model)
    assert decay == {f"transformer.h.0.{m}.weight" for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert {"transformer.wte.weight", "transformer.wpe.weight"} <= no_decay


def test_warmup_cosine_values():
    cfg = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, decay_steps=110)
    f = WarmupCosine(cfg)
    assert f(0) == pytest.approx(1 / 11)
    assert f(9) == pytest.approx(10 / 11)
    assert f(10) == pytest.approx(1.0)  # warmup ends at the peak
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down the cosine: the mean of peak and floor
    assert f(35) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert f(110) == pytest.approx(0.1) and f(10_000) == pytest.approx(0.1)  # the floor, then flat


def test_scheduler_drives_the_optimizer_lr():
    model = torch.nn.Linear(4, 4, bias=False)
    optimizer, scheduler = build_optimizer(model, OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=2, decay_steps=6))
    lrs = []
    for _ in range(8):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[2] == pytest.approx(1e-3) and lrs[6] == pytest.approx(1e-4) and lrs[7] == pytest.approx(1e-4)
    assert lrs[0] < lrs[1] < lrs[2] and lrs[3] > lrs[4] > lrs[5] > lrs[6]


class _Schedules(L.Callback):
    """stage -> per optimizer step (no accumulation here): the built schedule's warmup and decay lengths, its step
    and the lr the step is taken at."""

    def __init__(self, into: dict):
        self.into = into

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        scheduler = trainer.lr_scheduler_configs[0].scheduler
        [(warmup, decay)] = {(f.warmup, f.decay) for f in scheduler.lr_lambdas}  # one per parameter group, alike
        lrs = {group["lr"] for group in trainer.optimizers[0].param_groups}
        self.into.setdefault(pl_module.hparams["meta"]["stage"], []).append(
            (warmup, decay, scheduler.last_epoch, lrs.pop() if len(lrs) == 1 else lrs))


T, REFERENCE_STEPS, WARMUP = 10, 20, 5
# per method: the overrides, and every stage it trains with its own length (the reference's is 20 steps, the targets'
# T = 10, Inheritune's scratch baseline 20), written out here rather than read from the plan
SCHEDULE_CASES = {
    "inheritune": (["method=inheritune", "method.n_layer=2", "method.max_layers=3", "method.grow_by=1",
                    "method.tolerance=-100", f"method.scratch_baselines=[{REFERENCE_STEPS}]"],
                   {"reference": REFERENCE_STEPS, "round1-L2": T, "round2-L3": T, "scratch-L3-T20": REFERENCE_STEPS}),
    "scratch": (["method=scratch"], {"scratch": T}),
    "stacking": (["method=stacking", "method.n_layer=4"], {"stage1-L2": T, "stage2-L4": T}),
    "hybrid_stacking": (["method=hybrid_stacking", "method.n_layer=4"], {"hybrid-L4": T}),
    "half_width": (["method=half_width"], {"halfwidth-L4-d16": T}),
    "kd": (["method=kd", "method.n_layer=2"], {"student-L2": T}),
    "distilbert_kd": (["method=distilbert_kd", "method.n_layer=2"], {"student-L2": T}),
}


@pytest.mark.parametrize("method", list(SCHEDULE_CASES))
def test_every_stage_warms_up_and_decays_over_its_own_steps_in_the_schedule_it_trains_with(
        method, tmp_path, fixture_data_dir, monkeypatch, shared_reference):
    """For every method (Inheritune's rounds, stacking's stages, each baseline) and the reference, the scheduler
    the fit actually steps starts at 0 with the stage, warms up over optim.warmup_steps and decays over the stage's
    own steps (not the fit's, the config's train.max_steps or the reference's): every step's lr is the warmup-cosine
    of that stage's length. Inheritune trains its reference here; the others find it trained."""
    from conftest import TINY

    from lit_inheritune.config import compose
    from lit_inheritune.run import run
    from lit_inheritune.training import runner

    overrides, stages = SCHEDULE_CASES[method]
    cfg = compose([*TINY, "model.n_layer=4", f"train.max_steps={T}", f"train.val_every_n_steps={T}",
                   f"optim.warmup_steps={WARMUP}", f"reference.max_steps={REFERENCE_STEPS}", *overrides,
                   f"paths.root_dir={tmp_path}", f"data.data_dir={fixture_data_dir}"])
    if method != "inheritune":
        shared_reference(cfg)
    seen = {}
    original = runner._callbacks
    monkeypatch.setattr(runner, "_callbacks", lambda *a, **k: [*original(*a, **k), _Schedules(seen)])
    run(cfg)
    assert set(seen) == set(stages)
    lr = float(cfg.optim.lr)
    for stage, steps in stages.items():
        want = WarmupCosine(OptimConfig(lr=lr, min_lr=float(cfg.optim.min_lr), warmup_steps=WARMUP, decay_steps=steps))
        assert [(w, d, s) for w, d, s, _ in seen[stage]] == [(WARMUP, steps, i) for i in range(steps)], stage
        assert [r[3] for r in seen[stage]] == pytest.approx([lr * want(i) for i in range(steps)]), stage
