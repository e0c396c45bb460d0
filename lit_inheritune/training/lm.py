"""The causal-LM LightningModule: reference, scratch and every Inheritune stage train through it."""

from __future__ import annotations

import lightning as L
import torch
from torchmetrics import MeanMetric

from lit_inheritune.errors import DivergenceError
from lit_inheritune.models import config_dict, family_of
from lit_inheritune.training.optim import OptimConfig, build_optimizer


class CausalLM(L.LightningModule):
    """Trains a model of any family (lit_inheritune/models): forward(idx, targets) -> {"logits", "loss", ...}."""

    def __init__(self, model: torch.nn.Module, optim: OptimConfig, meta: dict | None = None):
        super().__init__()
        self.model = model
        self.optim = optim
        self.val_loss = MeanMetric()  # not persistent: checkpoints hold only the model
        # train.compile, set by the runner: a speed setting, so neither in the hyper-parameters nor in the identity
        self.compile_model = False
        # Plain dicts only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters(
            {"model": config_dict(model), "optim": vars(optim).copy(), "meta": dict(meta or {})}
        )

    def replace_model(self, model) -> None:
        """Swap in another model (a stage's grown one): its config is what the checkpoints record."""
        self.model = model
        self.hparams["model"] = config_dict(model)
        if self.compile_model:
            self._compile()

    def configure_model(self) -> None:
        # before the strategy wraps the module (DDP, FSDP), at every fit and validate
        if self.compile_model:
            self._compile()

    def _compile(self) -> None:
        """Compile the model in place (nn.Module.compile): unlike torch.compile(model), which wraps it, the module
        and its state-dict keys stay those of the plain model, so checkpoints hold no `_orig_mod.` prefix and
        load, inherit and analyse as an eager run's. A grown model is a new module: replace_model compiles it."""
        if getattr(self.model, "_compiled_call_impl", None) is None:  # not again for a fit's closing validate
            self.model.compile()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # A fit that grows (training/grow.py) saves the model of the stage it is in; rebuild that model before
        # Lightning loads its weights and, after this hook, builds the optimizer around it.
        recorded = (checkpoint.get("hyper_parameters") or {}).get("model")
        if recorded is not None and recorded != config_dict(self.model):
            self.replace_model(family_of(recorded).from_hparams(recorded, None).to(self.device))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        return self.model(idx, targets)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.model(x, y)["loss"]
        if not torch.isfinite(loss):
            # fit_stage adds the stage, what to change and what the stage keeps (an expected failure: one line)
            raise DivergenceError(f"training loss is {loss.item()} at step {self.global_step} (batch {batch_idx})")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = self.model(x, y)["loss"]
        # Weighted by tokens, so val/loss is the mean over tokens (and val/ppl exp of it) even when the last
        # batch is smaller (num_val_windows not a multiple of the val batch size).
        self.val_loss.update(loss, weight=y.numel())
        return loss

    def on_validation_epoch_end(self) -> None:
        # One value from the metric (synced across ranks), so val/loss and val/ppl describe the same evaluation.
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True)
        self.log("val/ppl", torch.exp(loss.clamp(max=50.0)))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip by the global gradient norm (trainer.gradient_clip_val, 1.0 in the paper) under every strategy.

        Under FSDP each rank holds only a shard of every gradient, so the norm must be reduced across ranks;
        only the root FSDP module can do that, and Lightning's FSDP precision plugin has no handle on it, so
        it refuses norm clipping (`gradient_clip_algorithm='norm' is currently not supported`) at the first
        optimizer step. Here the root module is at hand: clip through it. Other strategies take Lightning's path.
        """
        from torch.distributed.fsdp import FullyShardedDataParallel

        root = self.trainer.strategy.model
        if (isinstance(root, FullyShardedDataParallel) and gradient_clip_val
                and (gradient_clip_algorithm or "norm") == "norm"):
            root.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        optimizer, scheduler = build_optimizer(self.model, self.optim)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
