"""Expected failures, and how every command-line entry point reports them.

An expected failure (a bad config or override, missing, mismatched or corrupt input) is one line on stderr,
`error: <what, which key or file, what to do>`, and exit code 2, with no traceback unless HYDRA_FULL_ERROR=1.
Anything else is a bug and keeps its traceback.

This module imports nothing heavy: the entry points use it before torch or Lightning are loaded.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


class ConfigError(ValueError):
    """A request that cannot work, caught before any compute is spent."""


class CheckpointError(ValueError):
    """A checkpoint file that is missing, corrupt or not one of ours."""


class DivergenceError(FloatingPointError):
    """Training stopped by a non-finite loss: a setting to change, not a bug."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a fit, carrying the line `run_cli` prints: what the run keeps and how to continue."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are ConfigErrors: one `error:` line under `run_cli`, like every other."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see {self.prog} --help)")


# The expected failures, by module and class name (a subclass counts too): matched by name so that knowing
# them imports nothing. tests/test_cli_errors.py checks that every *Error class of the package is listed.
EXPECTED = {
    "lit_inheritune.errors": ("ConfigError", "CheckpointError", "DivergenceError"),
    "lit_inheritune.data.prepare": ("DataError",),
    "lit_inheritune.data.corpus": ("CorpusError",),
    "lit_inheritune.tokenizer": ("TokenizerError",),
    "lit_inheritune.models.common": ("SurgeryError", "ModelLoadError"),
    "lit_inheritune.models.hf_load": ("HFLoadError",),
    "lit_inheritune.evaluate": ("EvaluationError",),
    "lit_inheritune.tasks": ("TaskError",),
    "lit_inheritune.analysis": ("AnalysisError",),
    "lit_inheritune.export": ("ExportError",),
    # Hydra's composition and override errors, OmegaConf's type, missing-value and interpolation errors
    "hydra.errors": ("HydraException",),
    "omegaconf.errors": ("OmegaConfBaseException",),
}


# What to do about a system failure on a file, by errno (the file itself is named in front of it).
_DISK_FULL = ("the disk is full: free space there (or point paths.root_dir, data.data_dir or the command's out= "
              "at another disk) and rerun the same command (resume=true continues a stage from its last checkpoint)")
_NOT_WRITABLE = "cannot be written: point paths.root_dir (or the command's out=) at a directory you can write"
OS_ADVICE = {
    errno.ENOSPC: _DISK_FULL,
    errno.EDQUOT: _DISK_FULL,
    errno.EFBIG: "the file is larger than this filesystem allows: write to another disk",
    errno.EROFS: f"the filesystem is read-only, so the path {_NOT_WRITABLE}",
    errno.EACCES: f"permission denied: the path cannot be read, or {_NOT_WRITABLE}",
    errno.EPERM: f"permission denied: the path cannot be read, or {_NOT_WRITABLE}",
    errno.ENOTDIR: "a part of the path is a file, not a directory: give a path below a directory",
}


def is_expected(error: BaseException) -> bool:
    if isinstance(error, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return True
    if isinstance(error, OSError) and error.errno in OS_ADVICE:  # a full disk, a read-only filesystem
        return True
    # `python -m lit_inheritune.export` runs that module as __main__, so its ExportError is __main__.ExportError.
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    for cls in type(error).__mro__:
        module = spec.name if cls.__module__ == "__main__" and spec else cls.__module__
        if cls.__name__ in EXPECTED.get(module, ()):
            return True
    return False


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def one_line(error: BaseException) -> str:
    """The error as one line. Hydra's and OmegaConf's multi-line reports are cut to what the user acts on."""
    cause, kind = error.__cause__, type(error).__name__
    options = getattr(error, "options", None)
    if kind == "MissingConfigException" and options is not None:  # a group option that is not there
        group = error.missing_cfg_file.rsplit("/", 1)[0]
        return f"no config '{error.missing_cfg_file}'; {group}= takes one of: {', '.join(options)}"
    if kind == "OverrideParseException":
        return f"cannot parse the override {error.override!r}: {_first_line(error)}"
    if cause is not None and type(cause).__module__.startswith("omegaconf"):  # a bad override, e.g. wrong type
        key = re.search(r"full_key: (\S+)", str(cause))
        if type(cause).__name__ in ("ConfigAttributeError", "ConfigKeyError") and key:
            return (f"{key.group(1)} is not a config key ({_first_line(cause)}); `--cfg job` prints the composed "
                    "config with every key")
        return f"{_first_line(error).removeprefix('Error merging override ')}: {_first_line(cause)}"
    if kind == "MissingMandatoryValue":
        key = re.search(r"full_key: (\S+)", str(error))
        return f"{_first_line(error)}: give it on the command line ({key.group(1) if key else 'key'}=...)"
    if isinstance(error, OSError) and (error.filename is not None or error.errno in OS_ADVICE):
        advice = OS_ADVICE.get(error.errno)
        what = f"{error.strerror or error}{f'; {advice}' if advice else ''}"
        return f"{error.filename}: {what}" if error.filename is not None else what
    # Our own messages are one sentence already; OmegaConf's end in "full_key: ..., object_type=..." lines.
    lines = [line.strip() for line in str(error).splitlines()]
    return " ".join(line for line in lines if line and not line.startswith(("reference_type=", "object_type=")))


def fail(error: BaseException) -> NoReturn:
    print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USAGE)


class Failure(BaseException):
    """An exception on its way past Hydra to `run_cli`. Hydra handles an Exception raised inside a job itself
    (it prints "Error executing job with overrides: ..." before re-raising it) and inside a callback turns it
    into a warning and starts the job anyway; a BaseException passes through both untouched."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


@contextmanager
def cli_errors() -> Iterator[None]:
    """Wrap the body of a @hydra.main function (or a Hydra callback) so its failures reach `run_cli`."""
    try:
        yield
    except Exception as error:
        raise Failure(error) from None


def run_cli(entry: Callable[[], Any]) -> Any:
    """Run a command-line entry point (a @hydra.main function or an argparse main) with one-line errors.

    Hydra prints its own multi-line report of a composition error (and calls sys.exit(1)) unless
    HYDRA_FULL_ERROR=1, in which case it re-raises: so that is set while the entry point runs, every failure
    reaches this function, and the user's own setting decides whether an expected one keeps its traceback."""
    full = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        return entry()
    except Failure as failure:
        error = failure.error
    except KeyboardInterrupt as interrupt:  # Ctrl-C: what the run keeps (training.runner says), and exit 130
        print(str(interrupt) if isinstance(interrupt, Interrupted) and str(interrupt) else "interrupted",
              file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except Exception as e:
        error = e
    finally:
        if not full:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    if full or not is_expected(error):
        raise error  # a bug, or asked for: the traceback
    fail(error)
