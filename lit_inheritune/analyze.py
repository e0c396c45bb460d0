"""`python -m lit_inheritune.analyze ckpt=PATH data_dir=DIR`: attention degeneration of checkpoints.

Writes analysis.json, max_rank.png, max_rank.md and per-model heatmaps and attention maps to out_dir
(default: <run dir>/analysis). See lit_inheritune/conf/analyze.yaml for the keys.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lit_inheritune.analysis import AnalysisError, analyze_checkpoint
from lit_inheritune.config import CONFIG_DIR


def run_dir_of(ckpt: str | Path) -> Path:
    """A checkpoint at <run dir>/checkpoints/last.ckpt belongs to <run dir>; any other to its folder."""
    parent = Path(ckpt).parent
    return parent.parent if parent.name == "checkpoints" else parent


def _default_out_dir(ckpt, ckpts) -> str:
    first = ckpt or next(iter((ckpts or {}).values()), None)
    return str(run_dir_of(first) / "analysis") if first else "analysis"


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


@hydra.main(config_path=str(CONFIG_DIR), config_name="analyze", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    try:
        if OmegaConf.is_missing(cfg, "data_dir"):
            raise AnalysisError("no data directory given: pass data_dir=DIR (a prepared dataset)")
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
    except AnalysisError as e:
        raise SystemExit(f"error: {e}") from None
    for label, report in result["reports"].items():
        print(f"{label}: lazy layers {report['lazy_layers']} (tau={report['primary_tau']}), "
              f"MaxRank {[round(r, 2) for r in report['max_rank']]}")
    print(f"wrote {Path(cfg.out_dir).resolve()}/analysis.json, max_rank.md and figures")
    return result


if __name__ == "__main__":
    main()
