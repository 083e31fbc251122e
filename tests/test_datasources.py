"""Datasources on real demo CZI files: adding, immutability, verification, errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat

import numpy as np
import pytest

from bpho import datasources, io
from bpho.errors import ConflictError, FileFormatError, IntegrityError, InvalidNameError

from conftest import SMALL, assert_one_line_error, run_bpho


def _copy(demo, tmp_path, sub):
    """A private copy of part of the demo data (datasources hard-link and chmod their inputs)."""
    dst = tmp_path / "inputs" / sub
    shutil.copytree(demo / sub, dst)
    return dst


def test_add_paired_manifest_and_read_only(root, demo, tmp_path):
    src = _copy(demo, tmp_path, "paired")
    ds, created = datasources.add("confocal_airyscan_pairs_mito", [src], kind="paired", progress=False)
    assert created and ds.kind == "paired"
    m = json.loads((root / "datasources/confocal_airyscan_pairs_mito/manifest.json").read_text())
    assert len(m["files"]) == 2 * SMALL.paired_fields and len(m["pairs"]) == SMALL.paired_fields
    for f in m["files"]:
        path = ds.path / f["path"]
        assert f["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert f["size"] == path.stat().st_size
        img = io.read(path)
        assert f["shape"] == list(img.shape) and f["dtype"] == "uint16" and f["axes"] == "TCZYX"
        assert f["pixel_size_um"][1:] == pytest.approx(list(img.pixel_size[1:]))
        assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    for pair in ds.pairs:
        assert pair.lr.parent.name == "lr" and pair.hr.parent.name == "hr" and pair.lr.name == pair.hr.name
    assert ds.digest == datasources.open("confocal_airyscan_pairs_mito").digest


def test_readd_identical_is_noop_and_different_bytes_refused(root, demo, tmp_path):
    src = _copy(demo, tmp_path, "hr_only")
    ds, created = datasources.add("hr1", [src], kind="hr", progress=False)
    again, created_again = datasources.add("hr1", [src], kind="hr", progress=False)
    assert created and not created_again and again.digest == ds.digest
    before = (ds.path / "manifest.json").read_bytes()

    other = tmp_path / "other" / "hr_only"
    shutil.copytree(src, other)
    victim = sorted(other.glob("*.czi"))[0]
    os.chmod(victim, 0o644)
    data = io.read(victim).data.copy()
    data[0, 0, 0, 0, 0] += 1
    io.write_czi(victim, data, io.read(victim).pixel_size)
    with pytest.raises(ConflictError, match="immutable"):
        datasources.add("hr1", [other], kind="hr", progress=False)
    with pytest.raises(ConflictError):
        datasources.add("hr1", [src], kind="movie", progress=False)  # same files, other kind
    assert (ds.path / "manifest.json").read_bytes() == before


def test_digest_depends_on_content_not_time_or_place(demo, tmp_path, monkeypatch):
    src = _copy(demo, tmp_path, "denoise")
    digests = []
    for where in ("r1", "r2"):
        monkeypatch.setenv("BPHO_ROOT", str(tmp_path / where))
        digests.append(datasources.add("dn", [src], kind="denoise", progress=False)[0].digest)
    monkeypatch.setenv("BPHO_ROOT", str(tmp_path / "r3"))
    other = datasources.add("dn", [src / "noisy"], kind="hr", progress=False)[0].digest
    assert digests[0] == digests[1] != other


@pytest.mark.parametrize("tamper", ["modify", "delete", "add"])
def test_verify_detects_tampering_and_open_refuses(root, demo, tmp_path, tamper):
    src = _copy(demo, tmp_path, "movie")
    ds, _ = datasources.add("mv", [src], kind="movie", progress=False)
    assert datasources.verify("mv", progress=False) == []
    target = ds.path / "movie/lr/movie_000.czi"
    if tamper == "modify":
        os.chmod(target, 0o644)
        with open(target, "r+b") as fh:
            fh.seek(target.stat().st_size // 2)
            fh.write(b"\x00\x01")
        needle = "modified"
    elif tamper == "delete":
        target.unlink()
        needle = "missing"
    else:
        target = ds.path / "movie/lr/sneaked_in.czi"
        shutil.copy(ds.path / "movie/hr/movie_000.czi", target)
        needle = "extra"
    problems = datasources.verify("mv", progress=False)
    assert len(problems) == 1 and str(target) in problems[0] and needle in problems[0]
    with pytest.raises(IntegrityError, match="sneaked_in|movie_000"):
        datasources.open("mv")
    proc = run_bpho("datasource", "verify", "mv", root=root)
    assert proc.returncode == 1 and str(target) in proc.stderr


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "with space", "x" * 200, "/abs", "ok;rm"])
def test_bad_names_refused(root, demo, tmp_path, name):
    src = _copy(demo, tmp_path, "hr_only")
    with pytest.raises(InvalidNameError):
        datasources.add(name, [src], kind="hr", progress=False)
    assert not root.exists() or not any(root.rglob("*.czi"))
    assert_one_line_error(run_bpho("datasource", "add", name, src, "--kind", "hr", root=root), "name")


@pytest.mark.parametrize("case", ["truncated", "text", "empty"])
def test_corrupt_inputs_give_clear_error_and_leave_nothing(root, demo, tmp_path, case):
    src = _copy(demo, tmp_path, "hr_only")
    bad = src / "field_001.czi"
    os.chmod(bad, 0o644)
    if case == "truncated":
        bad.write_bytes(bad.read_bytes()[:20_000])
    elif case == "text":
        bad.write_text("not an image")
    else:
        bad.write_bytes(b"")
    with pytest.raises(FileFormatError) as err:
        datasources.add("broken", [src], kind="hr", progress=False)
    assert str(bad.name) in str(err.value)
    proc = run_bpho("datasource", "add", "broken", src, "--kind", "hr", root=root)
    assert_one_line_error(proc, "field_001.czi")
    leftovers = list((root / "datasources").iterdir()) if (root / "datasources").exists() else []
    assert leftovers == [], leftovers


def test_unmatched_pairs_listed(root, demo, tmp_path):
    src = _copy(demo, tmp_path, "paired")
    (src / "hr/field_001.czi").unlink()
    proc = run_bpho("datasource", "add", "pairs", src, "--kind", "paired", root=root)
    assert_one_line_error(proc, "paired/lr/field_001.czi", "no matching hr/")
    assert not (root / "datasources/pairs").exists()


def test_cli_list_show_verify(root, demo, tmp_path):
    src = _copy(demo, tmp_path, "denoise")
    run_bpho("datasource", "add", "dn", src, "--kind", "denoise", root=root, check=True)
    listed = run_bpho("datasource", "list", root=root, check=True).stdout
    assert "dn" in listed and "denoise" in listed and "2 pairs" in listed.replace("    ", " ").replace("  ", " ")
    shown = run_bpho("datasource", "show", "dn", "--json", root=root, check=True).stdout
    manifest = json.loads(shown)["manifest"]
    assert {p["stem"] for p in manifest["pairs"]} == {"denoise/field_000", "denoise/field_001"}
    verified = run_bpho("datasource", "verify", root=root, check=True)
    assert "dn: intact" in verified.stdout
    assert_one_line_error(run_bpho("datasource", "show", "nope", root=root), "nope", "not found")


def test_open_gives_files_pairs_digest(root, demo, tmp_path):
    src = _copy(demo, tmp_path, "paired")
    datasources.add("p", [src / "lr", src / "hr"], kind="paired", progress=False)
    ds = datasources.open("p")
    assert len(ds.files) == 2 * SMALL.paired_fields and all(f.is_file() for f in ds.files)
    assert len(ds.pairs) == SMALL.paired_fields and len(ds.digest) == 64
    hr = io.read(ds.pairs[0].hr)
    lr = io.read(ds.pairs[0].lr)
    assert hr.shape[-1] == SMALL.scale * lr.shape[-1]
    assert np.issubdtype(hr.data.dtype, np.integer)
