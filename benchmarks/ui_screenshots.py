"""README's screenshots of the MLflow UI, taken the way the tests look at it: `bpho ui` and headless Chromium.

    make demo && python benchmarks/ui_screenshots.py [--out docs] [--model bpho-paired_001]

Starts `bpho ui` on the store in use (``$BPHO_ROOT``'s embedded store, as after `make demo`),
and saves three pages at 1400 x 900: the runs view of bpho-train (``ui_runs.png``), the page
of the champion's training run (``ui_run.png``) and the registered model's page with its
versions and the ``champion`` alias (``ui_model.png``); PNGs reduced to 256 colours.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from mlflow import MlflowClient

from bpho import tracking


def screenshot(chromium: str, url: str, png: Path, profile: str) -> None:
    subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1400,900",
                    "--virtual-time-budget=20000", f"--screenshot={png}", url],
                   check=True, capture_output=True, timeout=180)
    from PIL import Image

    with Image.open(png) as img:
        small = img.convert("RGB").quantize(colors=256)
    small.save(png, optimize=True)
    print(f"{png}: {url} ({png.stat().st_size // 1024} KB)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs", help="folder for the PNGs")
    p.add_argument("--model", default="bpho-paired_001", help="the registered model to show")
    a = p.parse_args()
    chromium = shutil.which("chromium") or sys.exit("chromium is not installed (apt-get install chromium)")
    client = MlflowClient(tracking.tracking_uri())
    champion = client.get_model_version_by_alias(a.model, tracking.CHAMPION)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ui = subprocess.Popen([sys.executable, "-m", "bpho.cli", "ui", "--run", champion.run_id], stdout=subprocess.PIPE,
                          text=True, start_new_session=True)
    printed = {}
    try:
        for line in ui.stdout:
            key, _, value = line.strip().partition(": ")
            printed[key] = value
            if "run" in printed:
                break
        else:
            sys.exit(f"bpho ui stopped (exit code {ui.wait()})")
        address = printed["registered models"].split("/#/")[0]
        with tempfile.TemporaryDirectory() as profile:
            screenshot(chromium, printed["training runs"], out / "ui_runs.png", profile)
            screenshot(chromium, printed["run"], out / "ui_run.png", profile)
            screenshot(chromium, address + tracking.models_path(a.model), out / "ui_model.png", profile)
    finally:
        os.killpg(ui.pid, signal.SIGINT)  # bpho ui stops MLflow's process group
        ui.wait(timeout=60)


if __name__ == "__main__":
    main()
