"""`python -m lit_inheritune.analyze ckpt=PATH data_dir=DIR`: attention degeneration of checkpoints.
`python -m lit_inheritune.analyze hf=smollm2`: the same of a pretrained Hugging Face model (issue #7).

Writes analysis.json, max_rank.png, max_rank.md and per-model heatmaps and attention maps to out_dir
(default: <run dir>/analysis; for hf, outputs/analysis/<model>). See lit_inheritune/conf/analyze.yaml.
"""

from __future__ import annotations

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lit_inheritune.analysis import (
    AnalysisError,
    _safe_label,
    analyze_checkpoint,
    analyze_pretrained,
    check_inputs,
)
from lit_inheritune.config import CONFIG_DIR
from lit_inheritune.errors import cli_errors, run_cli
from lit_inheritune.models import family
from lit_inheritune.runs import run_dir_of

# The model family of the pretrained models `hf=NAME` names (conf/analyze.yaml).
PRETRAINED_FAMILY = "hf"


def _default_out_dir(ckpt, ckpts, pretrained=None) -> str:
    if pretrained and not (ckpt or ckpts):
        root = Path(os.environ.get("LIT_INHERITUNE_ROOT", "."))
        return str(root / "outputs" / "analysis" / _safe_label(Path(str(pretrained)).name))
    first = ckpt or next(iter((ckpts or {}).values()), None)
    return str(run_dir_of(first) / "analysis") if first else "analysis"


def hf_text_source(cfg: DictConfig) -> tuple[str | None, str | None]:
    """(data_dir, text) for an hf analysis: data_dir if given; else the prepared embedded corpus under
    LIT_INHERITUNE_ROOT if there is one; else the fixture corpus shipped with the tests."""
    if not OmegaConf.is_missing(cfg, "data_dir") and cfg.data_dir:
        return str(cfg.data_dir), None
    if cfg.hf_text:
        return None, str(cfg.hf_text)
    embedded = Path(os.environ.get("LIT_INHERITUNE_ROOT", ".")) / "data" / "embedded-bpe4096"
    if (embedded / "manifest.json").is_file():
        return str(embedded), None
    fixture = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "corpus"
    if fixture.is_dir():
        return None, str(fixture)
    raise AnalysisError("no text to analyse: pass data_dir=DIR (a prepared dataset) or hf_text=PATH (.txt files)")


def run_pretrained(cfg: DictConfig) -> dict:
    """The analysis of the pretrained model `hf=NAME` names (its family resolves aliases such as smollm2)."""
    data_dir, text = hf_text_source(cfg)
    return analyze_pretrained(family(PRETRAINED_FAMILY), str(cfg.hf), cfg.out_dir, gguf_file=cfg.hf_gguf_file,
                              cache_dir=cfg.hf_cache_dir, data_dir=data_dir, text=text, label=cfg.label or str(cfg.hf),
                              n_seq=cfg.n_seq, seq_len=cfg.seq_len, taus=list(cfg.taus), eta=cfg.eta, seed=cfg.seed,
                              near_rank1=cfg.near_rank1, batch_size=cfg.batch_size, precision=str(cfg.precision))


if not OmegaConf.has_resolver("analysis_dir"):
    OmegaConf.register_new_resolver("analysis_dir", _default_out_dir)


def checkpoints_of(cfg: DictConfig) -> dict[str, str]:
    ckpts = {str(label): str(path) for label, path in (cfg.ckpts or {}).items()}
    if cfg.ckpt:
        label = cfg.label or run_dir_of(cfg.ckpt).name
        if label in ckpts:
            raise AnalysisError(f"label {label!r} is given twice (ckpt and ckpts)")
        ckpts = {label: str(cfg.ckpt), **ckpts}
    if not ckpts:
        raise AnalysisError("no checkpoint given: pass ckpt=PATH or +ckpts.LABEL=PATH (one per model)")
    return ckpts


def preflight(cfg: DictConfig) -> None:
    """The checkpoints and the data, checked before Hydra creates out_dir (the Preflight callback in
    analyze.yaml; analyze_checkpoint checks them again). A Hugging Face model is checked as it loads."""
    if cfg.get("hf"):  # a pretrained model, not checkpoints
        return
    if OmegaConf.is_missing(cfg, "data_dir"):
        raise AnalysisError("no data directory given: pass data_dir=DIR (a prepared dataset)")
    check_inputs(checkpoints_of(cfg), cfg.data_dir, cfg.seq_len)


@hydra.main(config_path=str(CONFIG_DIR), config_name="analyze", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    with cli_errors():
        if cfg.get("hf"):  # a pretrained model, not checkpoints
            result = run_pretrained(cfg)
        else:
            result = analyze_checkpoint(
                checkpoints_of(cfg),
                data_dir=cfg.data_dir,
                out_dir=cfg.out_dir,
                n_seq=cfg.n_seq,
                seq_len=cfg.seq_len,
                taus=list(cfg.taus),
                eta=cfg.eta,
                seed=cfg.seed,
                near_rank1=cfg.near_rank1,
                pairs=OmegaConf.to_container(cfg.pairs) if cfg.pairs else None,
                strings=list(cfg.strings) if cfg.strings else None,
                grad_batch_size=cfg.grad_batch_size,
                batch_size=cfg.batch_size,
                precision=str(cfg.precision),
            )
    for label, report in result["reports"].items():
        print(f"{label}: lazy layers {report['lazy_layers']} (tau={report['primary_tau']}), "
              f"MaxRank {[round(r, 2) for r in report['max_rank']]}")
    print(f"wrote {Path(cfg.out_dir).resolve()}/analysis.json, max_rank.md and figures")
    return result


if __name__ == "__main__":
    run_cli(main)
