from pathlib import Path

import pytest

from lit_inheritune.tokenizer import (
    EOT_TOKEN,
    TokenizerError,
    gpt2_tokenizer,
    load_bpe,
    load_tokenizer,
    train_bpe,
)

CORPUS = Path(__file__).parent / "fixtures" / "corpus"


def fixture_texts() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(CORPUS.glob("*.txt"))]


def test_gpt2_matches_the_published_ids():
    tok = gpt2_tokenizer()
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the") == [262]
    assert tok.encode("\n") == [198]
    assert tok.eot_id == 50256
    assert tok.vocab_size == 50257
    assert tok.spec() == {"kind": "gpt2", "vocab_size": 50257}
    assert load_tokenizer(tok.spec()) is tok


def test_gpt2_round_trip_and_batch():
    tok = gpt2_tokenizer()
    texts = ["Full fathom five thy father lies;", "héllo wörld 🤗\n\n  indented", ""]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    for text in texts:
        assert tok.decode(tok.encode(text)) == text
    # The literal string is text in a document; only the data pipeline inserts the EOT id.
    assert tok.eot_id not in tok.encode(f"a {EOT_TOKEN} b")
    assert tok.decode([tok.eot_id]) == EOT_TOKEN


def test_bpe_train_save_load_round_trip(tmp_path):
    texts = fixture_texts()
    tok = train_bpe(texts, vocab_size=512, path=tmp_path / "tokenizer.json")
    assert tok.vocab_size == 512
    assert tok.eot_id == 0
    spec = tok.spec()
    assert spec["kind"] == "bpe" and spec["vocab_size"] == 512 and len(spec["sha256"]) == 64

    for text in texts[:3] + ["unseen: Ωmega 🤗 bytes\tand tabs"]:
        ids = tok.encode(text)
        assert max(ids) < tok.vocab_size
        assert tok.decode(ids) == text
    assert tok.eot_id not in tok.encode(f"x{EOT_TOKEN}y")
    assert tok.encode_batch(texts[:2]) == [tok.encode(t) for t in texts[:2]]

    reloaded = load_bpe(tmp_path / "tokenizer.json")
    assert reloaded.encode(texts[0]) == tok.encode(texts[0])
    assert load_tokenizer(spec, tmp_path).spec() == spec


def test_bpe_training_is_deterministic(tmp_path):
    texts = fixture_texts()
    first = train_bpe(texts, 400, tmp_path / "a" / "tokenizer.json")
    second = train_bpe(texts, 400, tmp_path / "b" / "tokenizer.json")
    assert first.spec() == second.spec()


def test_load_tokenizer_reports_missing_and_foreign_files(tmp_path):
    tok = train_bpe(fixture_texts()[:4], 300, tmp_path / "tokenizer.json")
    with pytest.raises(TokenizerError, match="sha256"):
        load_tokenizer({**tok.spec(), "sha256": "0" * 64}, tmp_path)
    with pytest.raises(TokenizerError, match="missing"):
        load_tokenizer(tok.spec(), tmp_path / "elsewhere")
    with pytest.raises(TokenizerError, match="unknown tokenizer kind"):
        load_tokenizer({"kind": "sentencepiece"}, tmp_path)


def test_model_families_register_their_tokenizer_kinds_and_an_unknown_kind_imports_no_model():
    """tokenizer.py owns the registry of spec kinds; the model-family interface registers its families' (hf) when
    it is imported. An unknown kind is refused without importing anything from lit_inheritune.models."""
    import os
    import subprocess
    import sys

    code = """
import sys
from lit_inheritune.tokenizer import TokenizerError, load_tokenizer, tokenizer_kinds
assert tokenizer_kinds() == ("gpt2", "bpe"), tokenizer_kinds()
try:
    load_tokenizer({"kind": "hf", "path": "nowhere"})
except TokenizerError as e:
    assert "unknown tokenizer kind 'hf'" in str(e), e
assert not [m for m in sys.modules if m.startswith("lit_inheritune.models")]
import lit_inheritune.models
assert tokenizer_kinds() == ("gpt2", "bpe", "hf"), tokenizer_kinds()
assert "lit_inheritune.models.hf" not in sys.modules and "torch" not in sys.modules
print("ok")
"""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
