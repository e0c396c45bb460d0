"""Files written whole or not at all, and file hashes.

Every file the package writes for a later step to read back (manifests, identities, results, CSV logs,
checkpoints, tokenizers, task files, converted model directories) is written here: into a temporary name in the
same directory (hidden, unique to the process), flushed to disk, then renamed over the target with os.replace,
which is atomic within one filesystem. A run killed mid-write leaves the previous file, or none, never half of
one; a failed write removes its temporary file.

Imports nothing of the package (and no torch): any module may use it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

CHUNK_BYTES = 1 << 22


def temp_path(path: str | Path) -> Path:
    """A temporary name beside `path` (same directory, so the rename stays on one filesystem), hidden and
    unique to this process."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """`open(path, mode)` for writing, except that `path` appears, complete and synced, only when the block
    ends without error."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # e.g. below a file, or a read-only filesystem: there is no temporary file to remove
            pass
        if isinstance(error, OSError) and error.filename in (None, str(tmp)):
            error.filename = str(path)  # a full disk or read-only filesystem is reported naming the file meant
        raise


def write_bytes_atomic(path: str | Path, data) -> None:
    """`data` (bytes or any buffer, e.g. a BytesIO's getbuffer()) as the file `path`."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


def write_json_atomic(path: str | Path, obj) -> None:
    """JSON as the package writes it everywhere (files on disk are compared): indent 2, sorted keys, a final
    newline."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv_atomic(path: str | Path, header: list[str], rows: Iterable[dict]) -> None:
    """A CSV log (header, then one line per row): a kill never leaves half a log. Creates the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


@contextmanager
def atomic_dir(path: str | Path, keep_existing: bool = False) -> Iterator[Path]:
    """A fresh temporary directory beside `path` to fill; when the block ends without error it is renamed to
    `path`. An existing `path` is removed first, or, with `keep_existing`, kept (another process finished the
    same directory first) and the temporary one dropped. On error `path` is left as it was. Creates parents."""
    path = Path(path)
    tmp = temp_path(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            if keep_existing:
                return
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def file_sha256(path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> str:
    """The sha256 of a file's bytes as hex, read in chunks (shards and checkpoints can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
