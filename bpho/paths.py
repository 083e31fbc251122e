"""Where bpho keeps its data, and the names allowed inside it.

`BPHO_ROOT` (default ``./bpho-data``) holds ``datasources/NAME/``, ``datasets/NAME/``
and the embedded MLflow store. Names are checked here so that no name can point
outside the root.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from bpho.errors import ConflictError, InvalidNameError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def root() -> Path:
    """The bpho data folder: `$BPHO_ROOT`, else ``./bpho-data``."""
    from bpho.config import env_root  # here: config.py may import this module

    return Path(env_root()).absolute()


def check_name(name: str, what: str = "name") -> str:
    """Return `name` if it is letters, digits, ``_`` and ``-`` only (no path tricks)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidNameError(
            f"{what} {name!r}: use letters, digits, '_' and '-' only "
            "(starting with a letter or digit, at most 128 characters)"
        )
    return name


def named_dir(kind: str, name: str) -> Path:
    """``$BPHO_ROOT/<kind>/<name>`` for a checked name."""
    return root() / kind / check_name(name, kind.rstrip("s") + " name")


@contextmanager
def atomic_dir(dest: Path, replace: bool = False) -> Iterator[Path]:
    """Build a folder in a temporary sibling and rename it to `dest` when complete.

    Yields the temporary folder. On any exception the temporary folder is removed and
    `dest` is left as it was, so a crash never leaves a half-built folder behind.
    """
    dest = Path(dest)
    if dest.exists() and not replace:
        raise ConflictError(f"{dest}: already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-{os.getpid()}-", dir=dest.parent))
    trash = None
    try:
        yield tmp
        if dest.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, trash / dest.name)
        os.replace(tmp, dest)
    except BaseException:
        remove_tree(tmp)
        raise
    if trash is not None:
        remove_tree(trash)


def _remove_stale(dest: Path) -> None:
    """Remove temporary folders of `dest` left by killed processes (their pid is gone)."""
    for old in dest.parent.glob(f".{dest.name}.tmp-*-*"):
        pid = old.name[len(f".{dest.name}.tmp-"):].split("-")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            remove_tree(old)
        except PermissionError:  # alive, another user's
            pass


@contextmanager
def atomic_file(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` when the block completes.

    The file gets the permissions of an ordinary new file (not mkstemp's 0600). On any
    exception the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_tree(path: Path) -> None:
    """Remove a folder even where its files were made read-only."""

    def _writable_then_retry(func, p, _exc_info):
        os.chmod(os.path.dirname(p), 0o755)
        func(p)

    if Path(path).exists():
        shutil.rmtree(path, onerror=_writable_then_retry)
