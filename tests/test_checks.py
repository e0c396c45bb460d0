"""The config schemas and the pre-compute checks agree with the code they guard (issue #12)."""

import dataclasses
import inspect
import json
from pathlib import Path

import pytest

from lit_inheritune import schema
from lit_inheritune.config import compose
from lit_inheritune.errors import ConfigError


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_schemas_have_the_fields_of_what_they_instantiate():
    from lit_inheritune.data.datamodule import TokenDataModule
    from lit_inheritune.data.prepare import prepare
    from lit_inheritune.models.gpt import GPTConfig
    from lit_inheritune.models.hf import HFModelSpec
    from lit_inheritune.training.optim import OptimConfig

    assert _fields(schema.GPTModelSchema) == _fields(GPTConfig) | {"_target_"}
    assert _fields(schema.HFModelSchema) == _fields(HFModelSpec) | {"_target_"}
    assert _fields(schema.OptimSchema) - {"_target_"} <= _fields(OptimConfig)
    assert _fields(schema.DataSchema) - {"_target_"} <= set(inspect.signature(TokenDataModule).parameters)
    assert _fields(schema.PrepareSchema) <= set(inspect.signature(prepare).parameters)


def test_every_method_config_names_a_method_with_its_own_checks_and_the_parts_the_code_has():
    from lit_inheritune.config import CONFIG_DIR, compose
    from lit_inheritune.methods import BUILT_IN, Method, method_class
    from lit_inheritune.models import BLOCK_PARTS, gpt

    names = sorted(p.stem for p in (CONFIG_DIR / "method").glob("*.yaml"))
    assert len(names) == 8
    classes = {name: method_class(compose([f"method={name}"]).method) for name in names}
    assert sorted(classes.values(), key=id) == sorted(BUILT_IN, key=id)  # one class per method config
    for name, cls in classes.items():
        assert cls.name == name  # the class's default name is its config's
        if name != "scratch":  # every other built-in method checks its parameters
            assert cls.validate is not Method.validate, name
    assert gpt.BLOCK_PARTS is BLOCK_PARTS and tuple(BLOCK_PARTS) == ("block", "attn", "mlp", "attn_mlp")


@pytest.mark.parametrize("override, key", [("train.max_steps=abc", "train.max_steps"),
                                           ("model.n_head=1.5", "model.n_head"),
                                           ("data.verify_checksum=maybe", "data.verify_checksum")])
def test_wrong_types_are_refused_while_composing_naming_the_key(override, key):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=f"override {key}="):
        compose(["method=inheritune", override])


@pytest.mark.parametrize("override, message", [
    ("method.grow_by=two", r"^method.grow_by: Value 'two' of type 'str' could not be converted to Integer"),
    ("method.blocks=[a,b]", r"^method.blocks\[0\]: Value 'a' of type 'str' could not be converted to Integer"),
    ("+method.alpha=0.5", r"^method.alpha: Key 'alpha' not in 'Inheritune' \(the keys of method=inheritune are: "
                          r"name, tag, n_layer, blocks"),
])
def test_a_method_key_is_checked_against_its_class_naming_the_key(override, message):
    """A method's dataclass is its schema: a wrong type or another method's key is refused before any directory
    exists, naming the key (and, for a foreign key, the keys the method has)."""
    from lit_inheritune.methods import load_method

    with pytest.raises(ConfigError, match=message):
        load_method(compose(["method=inheritune", override]).method)


def test_fixture_data_is_found_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose(["data=fixture", "model=cpu_tiny"])
    [corpus] = cfg.data.prepare.source.paths
    assert (Path(corpus) / "midsummer_01.txt").is_file()


def test_prepared_data_is_compared_with_the_request_key_by_key(fixture_data_dir, monkeypatch, tmp_path):
    from lit_inheritune.data.prepare import request_differences

    manifest = json.loads((fixture_data_dir / "manifest.json").read_text())
    request = json.loads(json.dumps(manifest["config"]))
    request["source"].pop("parts")
    assert request_differences(manifest, request) == []
    # the same files written another way, and a cache directory (a property of the machine), are the same data
    [corpus] = request["source"]["paths"]
    monkeypatch.chdir(corpus)
    assert request_differences(manifest, {**request, "source": {**request["source"], "paths": ["*.txt"]}}) == []
    assert request_differences(manifest, {**request, "tokenizer": {**request["tokenizer"], "cache_dir": "x"}}) == []
    other = {**request, "tokenizer": {**request["tokenizer"], "vocab_size": 1024}, "eot": "prepend",
             "source": {**request["source"], "paths": [str(tmp_path)]}}
    assert request_differences(manifest, other) == [
        "eot: prepared 'append', asked 'prepend'",
        f"source.paths: prepared [{corpus!r}], asked [{str(tmp_path)!r}]",
        "tokenizer.vocab_size: prepared 512, asked 1024",
    ]
