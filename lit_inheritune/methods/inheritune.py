"""`method=inheritune`: Algorithm 1 (PAPER.md section 1).

Inherit the reference's first n blocks (or `blocks`, or the n blocks `select` chooses by a measure of the reference:
lit_inheritune/selection.py), train T steps, and while the target's val loss is above the
reference's grow by `grow_by` layers (reinherit: a fresh copy of the first n + g reference blocks; append: the
trained blocks plus the next reference blocks) and train again, up to `max_layers`; then the scratch baselines. The
rounds are one fit, the GrowCallback growing the model between them (training/grow.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from omegaconf import MISSING

from lit_inheritune.errors import ConfigError
from lit_inheritune.methods.base import (
    Headers,
    Method,
    Run,
    Stage,
    added,
    control,
    derived_stage,
    measure,
    obtain_reference,
    reference_identity,
    reference_stage,
    scratch_stage,
    seeds_text,
    train_scratch,
    unique,
)
from lit_inheritune.methods.checks import check_attn_scale, check_steps
from lit_inheritune.methods.growing import first_batch, fit_identity
from lit_inheritune.models import BLOCK_PARTS, GROW_MODES, family_of
from lit_inheritune.selection import MEASURE_OF, SELECTIONS, TITLES, blocks_text, measure_settings
from lit_inheritune.training.strategy import is_fsdp, say

ROUND = re.compile(r"^round(\d+)-L\d+$")  # a round's stage name


@dataclass
class Inheritune(Method):
    name: str = "inheritune"
    n_layer: int = MISSING  # n: the target's first depth (default k/2)
    # An explicit list of reference blocks instead of the first n (e.g. [4,5,6,7], v4 Table 4); such a target does
    # not grow unless `grow_list` says so.
    blocks: list[int] | None = None
    # With `blocks`: grow as Algorithm 1 grows the first n, by the next reference blocks after the list's last
    # ([4,5,6,7] -> [4,...,8] -> ...), up to max_layers; each round re-inherits its blocks (reinherit only).
    grow_list: bool = added(False)
    parts: str = "block"  # block | attn | mlp | attn_mlp (Table 3)
    # Which n blocks: first (the paper) | potent / lazy (highest / lowest AvgRank) | block_influence | random
    # (lit_inheritune/selection.py); growth adds the next blocks by the same measure.
    select: str = added("first")
    copy_wpe: bool = False  # the official code copies neither the position embedding ...
    copy_ln_f: bool = False  # ... nor the final layer norm
    attn_scale: str = "position"  # a moved block's attention scale: its new position's, or its `source` block's
    grow_mode: str = "reinherit"  # reinherit (the paper) | append
    grow_by: int = control(2)
    max_layers: int = control(MISSING)
    tolerance: float = control(0.0)  # matched when val loss <= reference val loss + tolerance
    # append only: carry the AdamW moments of surviving parameters into the next round (recorded by the rounds it
    # changes, so it is a control key here)
    carry_optimizer: bool = control(False)
    scratch_baselines: list[int] = control([])  # same-size scratch runs after the last round, e.g. [T, 2T]

    uses_reference = True

    # -- configuration
    def validate(self, run: Run) -> None:
        k = run.depth
        if self.blocks:
            n = len(self.blocks)
            if not all(0 <= b < k for b in self.blocks):
                raise ConfigError(f"method.blocks={list(self.blocks)} names blocks outside the {k}-layer reference "
                                  f"(0..{k - 1}; model.n_layer={k})")
            repeated = sorted({b for b in self.blocks if list(self.blocks).count(b) > 1})
            if repeated:
                raise ConfigError(f"method.blocks={list(self.blocks)} names block(s) {repeated} more than once: a "
                                  "target inherits each reference block at most once; list distinct blocks (to "
                                  "repeat blocks use method=hybrid_stacking)")
        else:
            n = self.n_layer
            if not 1 <= n <= k:
                raise ConfigError(f"method.n_layer={n}: cannot inherit {n} layers from a {k}-layer reference "
                                  f"(model.n_layer={k})")
        if self.select not in SELECTIONS:
            raise ConfigError(f"method.select={self.select!r} is not one of {', '.join(SELECTIONS)}")
        if self.grow_list and not self.blocks:
            raise ConfigError("method.grow_list=true grows an explicit list of blocks (method.blocks); a first-n "
                              "target grows anyway, up to method.max_layers")
        if self.grow_list and self.grow_mode == "append" and self.max_layers >= n + self.grow_by:
            raise ConfigError("method.grow_list=true cannot grow with method.grow_mode=append: append adds the "
                              "reference blocks after the target's depth, not after the list's last block; use "
                              "method.grow_mode=reinherit (each round inherits its blocks afresh)")
        if self.blocks and self.select != "first":
            raise ConfigError(f"method.select={self.select} and method.blocks={list(self.blocks)} both say which "
                              "reference blocks to inherit; set one of them")
        if self.parts not in BLOCK_PARTS:
            raise ConfigError(f"method.parts={self.parts!r} is not one of {', '.join(BLOCK_PARTS)}")
        if self.grow_mode not in GROW_MODES:
            raise ConfigError(f"method.grow_mode={self.grow_mode!r} is not one of {', '.join(GROW_MODES)}")
        check_attn_scale(self.attn_scale)
        if self.grow_by < 1:
            raise ConfigError(f"method.grow_by={self.grow_by}: a growth round adds at least 1 layer")
        if self.max_layers > k:
            raise ConfigError(f"method.max_layers={self.max_layers} exceeds the reference's {k} layers "
                              "(model.n_layer)")
        if self.max_layers < n:
            raise ConfigError(f"method.max_layers={self.max_layers} is below the target's {n} layers; set it "
                              f"between {n} (no growth) and {k}")
        # against the deepest round (n + a multiple of grow_by, not max_layers itself): after the checks above, so
        # that depths() has a valid range
        if self.grow_list and max(self.blocks) + self.depths()[-1] - n > k - 1:
            raise ConfigError(f"method.max_layers={self.max_layers}: growing method.blocks={list(self.blocks)} by the "
                              f"blocks after its last ({max(self.blocks)}) stops at the {k}-layer reference's last "
                              f"block; set method.max_layers at most {n + k - 1 - max(self.blocks)}")
        if self.select != "first" and self.grow_mode == "append" and self.max_layers >= n + self.grow_by:
            raise ConfigError(f"method.select={self.select} cannot grow with method.grow_mode=append: append keeps "
                              "the trained blocks and adds the next reference blocks after them, but the next "
                              f"{TITLES[self.select]} blocks may lie between the chosen ones; use "
                              "method.grow_mode=reinherit (each round inherits its chosen blocks afresh) or "
                              f"method.max_layers={n} (no growth)")
        if self.carry_optimizer and self.grow_mode != "append":
            raise ConfigError("method.carry_optimizer=true keeps the AdamW state of the parameters that survive a "
                              "growth; only method.grow_mode=append keeps any (reinherit starts from fresh copies)")
        if self.carry_optimizer and is_fsdp(run.cfg):
            raise ConfigError("method.carry_optimizer=true cannot be honoured under FSDP (trainer=fsdp): there every "
                              "round is a fit of its own, which starts a fresh optimizer; drop method.carry_optimizer "
                              "(the paper's fresh optimizer per round), or use trainer=gpu or trainer=ddp to carry it")
        for steps in self.scratch_baselines:
            check_steps(run.cfg, "method.scratch_baselines", steps)
        family = family_of(run.model)
        if family.inherits_whole and (self.parts != "block" or not self.copy_wpe or not self.copy_ln_f):
            raise ConfigError(f"a {family.title} reference is inherited as the official lit-gpt code did (whole "
                              "layers, plus embeddings, final norm and head): set method.parts=block, "
                              "method.copy_wpe=true and method.copy_ln_f=true")
        if not family.keeps_source_scale and self.attn_scale == "source" and run.model.scale_attn_by_inverse_layer_idx:
            raise ConfigError(f"a {family.title} model scales attention by each layer's position (e.g. GPT-2); "
                              "method.attn_scale=source cannot be expressed there (use method.attn_scale=position)")

    # -- the stages
    def depths(self) -> list[int]:
        """The depth of every round Algorithm 1 may run: n, n + g, ... up to max_layers (one round for a list of
        blocks, unless grow_list)."""
        n = len(self.blocks) if self.blocks else int(self.n_layer)
        if self.blocks and not self.grow_list:
            return [n]
        return list(range(n, int(self.max_layers) + 1, int(self.grow_by)))

    def list_rounds(self) -> list[list[int]]:
        """The reference blocks of each round of a block list: the list, then the list plus the blocks after its
        last, as Algorithm 1 adds the blocks after the first n."""
        start, last = list(self.blocks), max(self.blocks)
        return [start + list(range(last + 1, last + 1 + n - len(start))) for n in self.depths()]

    def rounds(self, run: Run) -> list[Stage]:
        ref = reference_identity(run)
        rounds: list[Stage] = []
        for rnd, n_layer in enumerate(self.depths()):
            sources = {"reference": ref, "round": rnd, **first_batch(run, rnd)}
            if rnd and self.grow_mode == "append":
                sources["previous"] = rounds[-1].identity
                if self.carry_optimizer:
                    sources["carry_optimizer"] = True
            if self.select != "first":
                settings = measure_settings(self.select)
                if settings:
                    sources["selection"] = settings
                init = (f"inherits the {n_layer} {TITLES[self.select]} blocks of the reference"
                        f"{' afresh' if rnd else ''} ({self.parts})")
            elif rnd == 0:
                what = f"blocks {list(self.blocks)}" if self.blocks else self._blocks_named(range(n_layer))
                init = f"inherits {what} of the reference ({self.parts})"
            elif self.blocks:
                init = f"inherits blocks {blocks_text(self.list_rounds()[rnd])} of the reference afresh ({self.parts})"
            elif self.grow_mode == "append":
                added = range(rounds[-1].identity["model"]["n_layer"], n_layer)
                init = (f"round {rnd}'s target + reference {self._blocks_named(added)}"
                        f"{', its AdamW state carried' if self.carry_optimizer else ''}")
            else:
                init = f"inherits {self._blocks_named(range(n_layer))} of the reference afresh ({self.parts})"
            rounds.append(derived_stage(run, f"round{rnd + 1}-L{n_layer}", n_layer, "inheritune", init, **sources))
        return rounds

    @staticmethod
    def _blocks_named(blocks) -> str:
        """'block 2' or 'blocks 0-3', as the stage headers name what a round inherits."""
        blocks = list(blocks)
        return f"block {blocks[0]}" if len(blocks) == 1 else f"blocks {blocks_text(blocks)}"

    def baselines(self, run: Run) -> dict[int, list[Stage]]:
        """The scratch baselines for every depth the run may end at (e.g. [T, 2T] as in Table 1)."""
        return {n: [scratch_stage(run, n, int(steps), f"scratch-L{n}-T{steps}") for steps in self.scratch_baselines]
                for n in self.depths()}

    def plan(self, run):
        return unique([reference_stage(run), *self.rounds(run),
                       *(s for stages in self.baselines(run).values() for s in stages)])

    def check(self, run):
        from lit_inheritune.training.identity import check_stage_dir

        super().check(run)
        check_stage_dir(run.run_dir, fit_identity(self.rounds(run), tolerance=self.tolerance,
                                                  carry_optimizer=self.carry_optimizer))

    # -- training
    def surgery(self, run: Run):
        """(inherit(reference, n_layer, blocks), grow(target, reference, n_new)): the model family's surgery (targets
        train in float32 whatever the reference's dtype)."""
        family = family_of(run.model)
        kwargs = dict(parts=self.parts, copy_wpe=self.copy_wpe, copy_ln_f=self.copy_ln_f, attn_scale=self.attn_scale)
        return (lambda ref, n, blocks: family.inherit(ref, n_layer=n, blocks=blocks, **kwargs),
                lambda tgt, ref, n_new: family.grow(tgt, ref, n_new=n_new, mode=self.grow_mode, **kwargs))

    def chosen(self, run: Run, reference, datamodule) -> tuple[list[list[int]], list[float] | None]:
        """(the reference blocks each round inherits, the per-block measure they were chosen by or None)."""
        depths = self.depths()
        if self.blocks:
            return self.list_rounds(), None
        if self.select == "first":
            return [list(range(n)) for n in depths], None
        from lit_inheritune.selection import chosen_blocks, reference_cache_dir, reference_measure
        from lit_inheritune.training.identity import fingerprint

        values = None
        if self.select in MEASURE_OF:
            ref_stage = reference_stage(run)
            ref_fp = fingerprint(reference_identity(run))
            cache = reference_cache_dir(run.log_dir, run.name, None if ref_stage is None else ref_stage.dir, ref_fp)
            values = reference_measure(MEASURE_OF[self.select], reference, datamodule, cache, ref_fp,
                                       log=lambda line: say(f"[{run.name}] {line}"))
        chosen = chosen_blocks(self.select, depths, family_of(reference).n_layer(reference), values, seed=run.seed)
        say(f"[{run.name}] method.select={self.select}: round 1 inherits reference blocks {chosen[0]}"
            + (f", growth adds {', then '.join(str(sorted(set(b) - set(a))) for a, b in zip(chosen, chosen[1:]))}"
               if len(chosen) > 1 else ""))
        return chosen, values

    def judge(self, result: dict, ref: dict) -> dict:
        return {**result, "reference_val_loss": ref["val_loss"],
                "matched": result["val_loss"] <= ref["val_loss"] + self.tolerance}

    def bar_text(self, reference_val_loss: float) -> str:
        """What a round must reach, as the progress lines say it: the reference's val loss, or with a tolerance
        the bar it sets (a round below the reference but above the bar is not matched)."""
        if not self.tolerance:
            return f"reference {reference_val_loss:.4f}"
        return (f"the bar {reference_val_loss + self.tolerance:.4f} (reference {reference_val_loss:.4f} "
                f"{'+' if self.tolerance > 0 else '-'} tolerance {abs(self.tolerance):g})")

    def run(self, run, datamodule):
        import lightning as L

        from lit_inheritune.methods.growing import causal_lm_stages
        from lit_inheritune.training.grow import Growth
        from lit_inheritune.training.runner import fit_growth

        rounds = self.rounds(run)
        # at most: the reference, every round, and the scratch baselines of one depth (the one it stops at)
        most = unique([reference_stage(run), *rounds, *self.baselines(run)[self.depths()[-1]]])
        headers = Headers(run, most, may_stop_early=len(rounds) > 1)
        reference, ref_result = obtain_reference(run, datamodule, header=headers(reference_stage(run)))
        if ref_result is None:
            ref_result = measure(run, reference, datamodule)
            say(f"[{run.name}] reference {ref_result['n_layer']}L (given, not trained here): val loss "
                f"{ref_result['val_loss']:.4f} on this experiment's val windows")
        inherit, grow_target = self.surgery(run)
        chosen, values = self.chosen(run, reference, datamodule)
        L.seed_everything(run.seed, workers=True, verbose=False)
        blocks = list(self.blocks) if self.blocks else None
        depths = [s.identity["model"]["n_layer"] for s in rounds]
        if self.select == "first" and not self.grow_list:  # the paper: the first n, grown by the family's grow
            target = inherit(reference, None if blocks else depths[0], blocks)

            def grow(model, i):
                return grow_target(model, reference, depths[i] - model.config.n_layer)
        else:  # the chosen blocks (or a growing list), re-inherited each round (validate refuses append growth)
            target = inherit(reference, None, chosen[0])

            def grow(model, i):
                return inherit(reference, None, chosen[i])
        growth = Growth(
            stages=rounds, steps=run.steps, seeds=[run.seed + i for i in range(len(rounds))], name=run.name,
            grow=grow,
            stop=lambda r: self.judge(r, ref_result)["matched"],
            describe=lambda r: (f"vs {self.bar_text(ref_result['val_loss'])}: "
                                + ("matched" if self.judge(r, ref_result)["matched"] else "not matched")),
            carry_optimizer=self.carry_optimizer)
        identity = fit_identity(rounds, tolerance=self.tolerance, carry_optimizer=self.carry_optimizer)
        blocks_of = {stage.name: blocks for stage, blocks in zip(rounds, chosen)}
        results = [{**self.judge(r, ref_result), "blocks": blocks_of[r["stage"]]}
                   for r in fit_growth(run.cfg, causal_lm_stages(run), target, datamodule, growth, identity, headers)]
        final = results[-1]["n_layer"]
        baselines = self.baselines(run)[final]
        ref_stage = reference_stage(run)
        scratch = [  # same-size random init, e.g. [T, 2T] as in Table 1
            self.judge(train_scratch(run, datamodule, stage, final, stage.identity["train"]["max_steps"],
                                     header=headers(stage)), ref_result)
            for stage in baselines
        ]
        # a baseline that is the reference's own run (same depth, steps, seed) is the reference's row already
        scratch = [r for r, stage in zip(scratch, baselines) if ref_stage is None or stage.dir != ref_stage.dir]
        selection = None if self.select == "first" else {
            "select": self.select, "measure": MEASURE_OF.get(self.select), "values": values,
            "settings": measure_settings(self.select)}
        write_stage_table(run, ref_result, results + scratch, selection)
        return results + scratch

    def summary(self, run, results):
        table = run.run_dir / "stages.md"
        rounds = [r for r in results if ROUND.match(r["stage"])]
        if not rounds or not table.exists():
            return []
        final = rounds[-1]
        return ["\n" + table.read_text().split("\n\n", 1)[-1],
                f"[{run.name}] Inheritune {final['n_layer']}L {'matched' if final['matched'] else 'did not match'} "
                f"the reference (val loss {final['val_loss']:.4f} vs {self.bar_text(final['reference_val_loss'])}) after "
                f"{len(rounds)} round(s) | table {table}"]

    def analysis_results(self, run, results):
        """The reference beside every trained stage (stages.json)."""
        stages = run.run_dir / "stages.json"
        if not stages.exists():
            return results
        data = json.loads(stages.read_text())
        return [data["reference"], *data["stages"]]

    # -- what the report asks
    @classmethod
    def earlier_stages(cls, stage, identity, siblings):
        """A re-inherited round does not build on the round before, but that round had to be trained (and fall
        short) first; an appended round nests it already (init.previous)."""
        me = ROUND.match(stage)
        if not me or (identity.get("init") or {}).get("previous"):
            return []
        return [ident for name, ident in siblings.items()
                if (m := ROUND.match(name)) and int(m.group(1)) < int(me.group(1))]

    @classmethod
    def not_run_reason(cls, stage, fits):
        """A round Algorithm 1 never reached: every seed's fit, finished or not, stopped at an earlier round that
        matched the reference."""
        wanted = ROUND.match(stage)
        if not wanted:
            return None
        matched: dict[str, list] = {}
        for seed, stages in fits:
            first = next((st["stage"] for st in stages if ROUND.match(st["stage"]) and st.get("matched")), None)
            if first is None or int(ROUND.match(first).group(1)) >= int(wanted.group(1)):
                return None
            matched.setdefault(first.split("-")[0], []).append(seed)
        if not matched:
            return None
        return "not run: " + "; ".join(f"{name} matched ({seeds_text(seeds)})" for name, seeds in sorted(matched.items()))

    @classmethod
    def growth_outcome(cls, stages):
        rounds = [st for st in stages if ROUND.match(st["stage"])]
        if not rounds:
            return None
        return {"stages": rounds, "matched": next((st for st in rounds if st.get("matched")), None)}

    @classmethod
    def first_stage_note(cls, labels):
        return (f"Round 1 matched the reference in every seed of {', '.join(labels)}: no growth round ran there, so "
                "append, reinherit and carry-optimizer growth (which differ from round 2 on) would cost the same.")


def write_stage_table(run: Run, ref: dict, results: list[dict], selection: dict | None = None) -> str:
    """stages.md and stages.json: the reference and every stage run, each round with the reference blocks it
    inherited; `selection` (method.select other than first: the strategy, its measure and per-block values) is
    recorded in both."""
    from lit_inheritune.io import write_json_atomic
    from lit_inheritune.provenance import provenance

    rows = [("reference", ref, "")] + [(r["stage"], r, "yes" if r["matched"] else "no") for r in results]
    lines = ["| stage | layers | params | steps | tokens | val loss | reference val loss | matched | blocks |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r, matched in rows:
        steps = "" if r.get("steps") is None else r["steps"]
        tokens = "" if r.get("tokens") is None else f"{r['tokens'] / 1e6:.2f}M"
        blocks = "" if r.get("blocks") is None else blocks_text(r["blocks"])
        lines.append(f"| {name} | {r['n_layer']} | {r['params'] / 1e6:.2f}M | {steps} | {tokens} | "
                     f"{r['val_loss']:.4f} | {ref['val_loss']:.4f} | {matched} | {blocks} |")
    table = "\n".join(lines) + "\n"
    prov = {**provenance(), "seed": run.seed, "experiment": run.name}
    header = "".join(f"- {k}: `{v}`\n" for k, v in prov.items())
    if selection:
        values = selection.get("values")
        header += (f"- select: `{selection['select']}`"
                   + (f" ({selection['measure']} per reference block: "
                      f"{', '.join(f'{v:.4g}' for v in values)})" if values else "") + "\n")
    (run.run_dir / "stages.md").write_text(f"{header}\n{table}")
    record = {"reference": ref, "stages": results, "provenance": prov}
    if selection:
        record["selection"] = selection
    write_json_atomic(run.run_dir / "stages.json", record)
    return table
