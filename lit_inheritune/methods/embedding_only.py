"""`method=embedding_only`: the control that asks what inheriting the blocks adds (issue #23 items 3 and 4).

The target takes from the reference exactly what an Inheritune target of its depth takes besides the blocks: the
token embedding (and so our GPT's tied head), the position embedding and the final norm when `copy_wpe` /
`copy_ln_f` say so, and for a Hugging Face reference its embeddings, final norm and head, as Appendix B's twin
does. Its blocks are those of the scratch model of the same depth and seed, so it differs from `method=scratch`
only in the inherited parts and from Inheritune only in the blocks. Trained T steps; it does not grow.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from lit_inheritune.errors import ConfigError
from lit_inheritune.methods.base import FromReference, Run, derived_stage, random_model, reference_identity
from lit_inheritune.models import family_of


@dataclass
class EmbeddingOnly(FromReference):
    name: str = "embedding_only"
    n_layer: int = MISSING  # the target's depth (default k/2, as Inheritune's)
    copy_wpe: bool = False  # as Inheritune's defaults (the official code): neither the position embedding ...
    copy_ln_f: bool = False  # ... nor the final norm

    def validate(self, run: Run) -> None:
        if not 1 <= self.n_layer <= run.depth:
            raise ConfigError(f"method.n_layer={self.n_layer}: the target's depth must be between 1 and the "
                              f"reference's {run.depth} layers (model.n_layer={run.depth})")
        family = family_of(run.model)
        if family.inherits_whole and not (self.copy_wpe and self.copy_ln_f):
            raise ConfigError(f"a {family.title} reference gives its embeddings, final norm and head whole (as an "
                              "Inheritune target takes them): set method.copy_wpe=true and method.copy_ln_f=true")

    def stage(self, run):
        return derived_stage(run, f"embedding-L{self.n_layer}", self.n_layer, "embedding_only",
                             "the reference's embeddings, fresh blocks", reference=reference_identity(run))

    def build(self, run, reference):
        """The Inheritune target of this depth with every block replaced by the scratch model's. The scratch model
        is drawn first, right after the run's seed is set (FromReference.run), as `train_scratch` draws it, so
        the blocks are the ones `method=scratch` of this depth and seed starts from."""
        import torch

        family = family_of(reference)
        fresh = random_model(run, self.n_layer)
        target = family.inherit(reference, n_layer=self.n_layer, copy_wpe=self.copy_wpe, copy_ln_f=self.copy_ln_f)
        with torch.no_grad():
            for mine, new in zip(family.blocks(target), family.blocks(fresh), strict=True):
                mine.load_state_dict(new.state_dict())
        return target
