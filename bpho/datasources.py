"""Immutable, named collections of raw microscope files.

A datasource lives in ``$BPHO_ROOT/datasources/NAME/``: the files (hard links to the
originals where the file system allows, else copies), made read-only, and
``manifest.json`` with one entry per file (relative path, size, sha256, shape, dtype,
axes, pixel size), the kind, and for paired kinds the LR/HR pairs.

Kinds and their pairs (matched by file stem, folder names anywhere in the path):

- ``paired``: ``lr/`` (low resolution, e.g. confocal) with ``hr/`` (e.g. Airyscan);
- ``movie``: time-lapse files; ``lr/`` with ``hr/`` where an HR truth exists;
- ``hr``: HR-only files, no pairs;
- ``denoise``: ``noisy/`` with ``clean/`` (stored as the pair's lr and hr sides).

The datasource digest is the sha256 of the manifest's canonical JSON without its
creation time: the same files under the same name and kind always give the same digest,
and it changes with any byte of any file. Every later stage opens a datasource through
`open`, which re-hashes the files and refuses one whose bytes changed.
"""

from __future__ import annotations

import builtins
import datetime as _dt
import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Dict, Iterable, List, Optional, Tuple

from tqdm import tqdm

import bpho
from bpho import io, paths
from bpho.errors import BphoError, ConflictError, IntegrityError, NotFoundError

KINDS = ("paired", "movie", "hr", "denoise")
PAIR_FOLDERS = {"paired": ("lr", "hr"), "movie": ("lr", "hr"), "denoise": ("noisy", "clean")}
MANIFEST = "manifest.json"
_CHUNK = 1 << 22


@dataclass(frozen=True)
class Pair:
    """An LR file and its HR file (paths inside the datasource), by their common stem."""

    stem: str
    lr: Optional[Path]  # None: an HR-only source (its LR is made by a degradation)
    hr: Path


@dataclass(frozen=True)
class Datasource:
    """An opened (and verified) datasource: what later stages read."""

    name: str
    kind: str
    path: Path
    manifest: dict
    digest: str

    @property
    def files(self) -> List[Path]:
        """Every file of the datasource, as its manifest lists them."""
        return [self.path / f["path"] for f in self.manifest["files"]]

    @property
    def pairs(self) -> List[Pair]:
        """The LR/HR pairs (paired and movie datasources; empty otherwise)."""
        return [Pair(p["stem"], self.path / p["lr"], self.path / p["hr"]) for p in self.manifest["pairs"]]


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in chunks."""
    h = hashlib.sha256()
    with builtins.open(path, "rb") as fh:  # `open` here is the datasource opener
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def digest_json(record: dict, exclude: Iterable[str] = ()) -> str:
    """sha256 of a record's canonical JSON (sorted keys, no spaces), leaving out `exclude` keys."""
    content = {k: v for k, v in record.items() if k not in set(exclude)}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def manifest_digest(manifest: dict) -> str:
    """The digest of a datasource manifest: all of it but its creation time."""
    return digest_json(manifest, exclude=("created",))


def _collect(sources: Iterable) -> List[Tuple[str, Path]]:
    """(relative path, file) for every image file given or found under a given folder.

    A folder's files keep the folder's own name as their first path component, so
    ``add X data/paired`` and ``add X data/paired/lr data/paired/hr`` both keep lr/ and hr/.
    """
    found: Dict[str, Path] = {}
    for src in map(Path, sources):
        if src.is_dir():
            files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in io.SUFFIXES)
            items = [(PurePosixPath(src.name, *p.relative_to(src).parts).as_posix(), p) for p in files]
            if not items:
                raise NotFoundError(f"{src}: no .czi, .tif or .tiff files in this folder")
        elif src.is_file():
            io.file_kind(src)  # a clear error for an unknown suffix, empty or mislabelled file
            items = [(src.name, src)]
        else:
            raise NotFoundError(f"{src}: no such file or folder")
        for rel, p in items:
            if rel in found and found[rel].resolve() != p.resolve():
                raise ConflictError(f"{p}: two inputs map to the same name {rel!r}; give their parent folder instead")
            found[rel] = p
    if not found:
        raise NotFoundError("no input files given")
    return sorted(found.items())


def _match_pairs(kind: str, rels: List[str]) -> List[dict]:
    if kind not in PAIR_FOLDERS:
        return []
    lr_name, hr_name = PAIR_FOLDERS[kind]
    sides: Dict[str, Dict[str, str]] = {lr_name: {}, hr_name: {}}
    outside = []
    for rel in rels:
        parts = PurePosixPath(rel).parts
        side = next((p for p in reversed(parts[:-1]) if p in sides), None)
        if side is None:
            outside.append(rel)
            continue
        i = len(parts) - 1 - parts[::-1].index(side)
        key = PurePosixPath(*parts[:i], *parts[i + 1:]).with_suffix("").as_posix()
        if key in sides[side]:
            raise ConflictError(f"{rel}: two {side}/ files share the stem {key!r}")
        sides[side][key] = rel
    lr, hr = sides[lr_name], sides[hr_name]
    if kind == "movie" and not lr and not hr:
        return []
    problems = [f"{r} (not under a {lr_name}/ or {hr_name}/ folder)" for r in outside]
    problems += [f"{lr[k]} (no matching {hr_name}/ file)" for k in sorted(set(lr) - set(hr))]
    problems += [f"{hr[k]} (no matching {lr_name}/ file)" for k in sorted(set(hr) - set(lr))]
    if problems:
        raise BphoError(
            f"{kind} datasource: unmatched files: {'; '.join(problems)}; "
            f"every {lr_name}/NAME file needs an {hr_name}/NAME file with the same stem"
        )
    return [{"stem": k, "lr": lr[k], "hr": hr[k]} for k in sorted(lr)]


def _describe(rel: str, path: Path) -> dict:
    """A manifest entry; reading every scene in full checks that the file decodes."""
    entry: dict = {"path": rel, "size": path.stat().st_size, "sha256": sha256_file(path), "scenes": 0}
    for img in io.read_scenes(path):  # one scene in memory at a time
        if entry["scenes"] == 0:
            entry.update(shape=list(img.shape), dtype=str(img.data.dtype), axes="TCZYX",
                         axes_source=img.axes_source, pixel_size_um=list(img.pixel_size))
        entry["scenes"] += 1
    return entry


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: copy
        shutil.copy2(src, dst)


def add(name: str, sources: Iterable, kind: str, progress: bool = True) -> Tuple[Datasource, bool]:
    """Add files as the immutable datasource `name` (sha256 manifest, read-only files).

    Parameters
    ----------
    name : str
        Letters, digits, ``_`` and ``-``.
    sources : iterable of path
        Files, or folders whose files are taken (CZI, TIFF), read in full to check them.
    kind : str
        paired, movie, hr or denoise (`KINDS`): how the files pair up.

    Returns
    -------
    (Datasource, bool)
        The datasource, and whether it was created: re-adding the same files (same bytes,
        relative paths and kind) changes nothing; anything else under an existing name is
        refused.

    Notes
    -----
    Files are hard linked where possible: their permission bits are shared with the
    originals, which therefore become read-only too. Built in a temporary folder: a failure
    leaves nothing.
    """
    dest = paths.named_dir("datasources", name)
    if kind not in KINDS:
        raise BphoError(f"datasource kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
    files = _collect(sources)
    pairs = _match_pairs(kind, [rel for rel, _ in files])
    bar = tqdm(files, desc=f"datasource {name}", unit="file", disable=not progress)
    if dest.exists():
        old = _load_manifest(name, dest)
        new = sorted((rel, sha256_file(src)) for rel, src in bar)
        if old["kind"] != kind or sorted((f["path"], f["sha256"]) for f in old["files"]) != new:
            raise ConflictError(
                f"datasource {name!r} already exists with different files or kind; "
                "datasources are immutable: add the new files under a new name"
            )
        return open(name), False
    with paths.atomic_dir(dest) as tmp:
        entries = []
        for rel, src in bar:
            _place(src, tmp / rel)
            entries.append(_describe(rel, tmp / rel))
        manifest = {
            "name": name,
            "kind": kind,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "bpho_version": bpho.__version__,
            "files": entries,
            "pairs": pairs,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        for path in [tmp / rel for rel, _ in files] + [tmp / MANIFEST]:
            _make_read_only(path)
    return open(name, verify=False), True


def _make_read_only(path: Path) -> None:
    mode = path.stat().st_mode
    os.chmod(path, mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _load_manifest(name: str, dest: Path) -> dict:
    path = dest / MANIFEST
    if not path.is_file():
        raise NotFoundError(
            f"datasource {name!r} not found under {dest.parent}; "
            "see `bpho datasource list`, or set BPHO_ROOT"
        )
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{path}: the manifest is not valid JSON ({exc})") from None


def verify(name: str, progress: bool = True) -> List[str]:
    """Re-hash a datasource; return one line per modified, missing or extra file (empty: intact)."""
    dest = paths.named_dir("datasources", name)
    manifest = _load_manifest(name, dest)
    problems = []
    listed = {f["path"] for f in manifest["files"]}
    for f in tqdm(manifest["files"], desc=f"verify {name}", unit="file", disable=not progress):
        path = dest / f["path"]
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != f["size"] or sha256_file(path) != f["sha256"]:
            problems.append(f"{path}: modified (its sha256 no longer matches the manifest)")
    for path in sorted(dest.rglob("*")):
        rel = path.relative_to(dest).as_posix()
        if path.is_file() and rel != MANIFEST and rel not in listed:
            problems.append(f"{path}: extra file, not in the manifest")
    return problems


def open(name: str, verify: bool = True, progress: bool = False) -> Datasource:  # noqa: A001
    """Open datasource `name` for reading; with `verify`, refuse it if any byte changed."""
    dest = paths.named_dir("datasources", name)
    manifest = _load_manifest(name, dest)
    if verify:
        problems = globals()["verify"](name, progress=progress)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise IntegrityError(
                f"datasource {name!r} changed after it was added: {problems[0]}{more}; "
                "run `bpho datasource verify " + name + "` for the full list"
            )
    return Datasource(name=name, kind=manifest["kind"], path=dest, manifest=manifest,
                      digest=manifest_digest(manifest))


def names() -> List[str]:
    """The names of the added datasources, sorted."""
    base = paths.root() / "datasources"
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / MANIFEST).is_file())


def summary(name: str) -> dict:
    """What `bpho datasource list/show` print: no re-hashing."""
    ds = open(name, verify=False)
    m = ds.manifest
    return {
        "name": name,
        "kind": m["kind"],
        "files": len(m["files"]),
        "pairs": len(m["pairs"]),
        "bytes": sum(f["size"] for f in m["files"]),
        "created": m["created"],
        "digest": ds.digest,
    }
