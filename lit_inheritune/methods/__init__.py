"""The methods: one module each (stacking and hybrid stacking, and the two distillations, share one). A method is
a dataclass subclassing `Method` (base.py): its fields are its config keys, and `conf/method/<name>.yaml` names it
with `_target_`. Adding one is a module and a yaml; nothing else names it.

This package imports neither torch nor Lightning: a method imports them inside `run`.
"""

from lit_inheritune.methods.base import (
    FromReference,
    Method,
    Reference,
    Run,
    Stage,
    derived_stage,
    load_method,
    make_run,
    method_class,
    obtain_reference,
    random_model,
    reference_identity,
    reference_stage,
    scratch_dir,
    scratch_stage,
    seeds_text,
)
from lit_inheritune.methods.distill import DistilBertKD, LogitKD
from lit_inheritune.methods.embedding_only import EmbeddingOnly
from lit_inheritune.methods.half_width import HalfWidth
from lit_inheritune.methods.inheritune import Inheritune
from lit_inheritune.methods.scratch import Scratch
from lit_inheritune.methods.stacking import HybridStacking, Stacking
from lit_inheritune.training.identity import register_method_keys

BUILT_IN: tuple[type[Method], ...] = (Scratch, Inheritune, Stacking, HybridStacking, HalfWidth, LogitKD, DistilBertKD,
                                     EmbeddingOnly)

for _cls in BUILT_IN:  # so identities recorded by any of them read alike wherever they are read (the report)
    register_method_keys(_cls.name, _cls.identity_keys())


def method_by_name(name: str) -> type[Method] | None:
    """The built-in method class of this name (the `name` its stages' identities record), or None."""
    return next((cls for cls in BUILT_IN if cls.name == name), None)


def reference_dir(cfg):
    """Where a composed config's reference is trained (its scratch run's directory; None when it is given)."""
    stage = reference_stage(make_run(cfg))
    return stage.dir if stage else None


__all__ = [
    "BUILT_IN", "DistilBertKD", "EmbeddingOnly", "FromReference", "HalfWidth", "HybridStacking", "Inheritune", "LogitKD", "Method",
    "Reference", "Run", "Scratch", "Stacking", "Stage", "derived_stage", "load_method", "make_run", "method_class", "obtain_reference",
    "method_by_name", "random_model", "reference_dir", "reference_identity", "reference_stage", "scratch_dir", "scratch_stage", "seeds_text",
]
