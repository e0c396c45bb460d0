"""`method=half_width` (PAPER.md section 4): the reference's depth at half its width and heads, sliced from it."""

from __future__ import annotations

from dataclasses import dataclass

from lit_inheritune.errors import ConfigError
from lit_inheritune.methods.base import FromReference, Run, derived_stage, reference_identity


@dataclass
class HalfWidth(FromReference):
    """The reference's depth at half its width and heads, initialised from its first half of heads and MLP units
    (surgery.half_width), trained T steps."""

    name: str = "half_width"

    def validate(self, run: Run) -> None:
        m = run.model
        if m.n_head % 2 or m.n_embd % 2:
            raise ConfigError(f"half width needs even heads and width, got model.n_head={m.n_head}, "
                              f"model.n_embd={m.n_embd} (the paper's XLarge has 25 heads and no half-width row)")

    def stage(self, run):
        k, H, C = run.depth, int(run.model.n_head), int(run.model.n_embd)
        return derived_stage(run, f"halfwidth-L{k}-d{C // 2}", k, "half_width", f"the reference sliced to d={C // 2}",
                             model={"n_embd": C // 2, "n_head": H // 2}, reference=reference_identity(run))

    def build(self, run, reference):
        from lit_inheritune.surgery import half_width

        return half_width(reference)
