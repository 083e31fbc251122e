"""The napari plugin: found by napari (npe2), the widget over a real MLflow registry (two models trained
here), its predictions equal to `bpho predict`'s, bad input as one notification, the reader.

Headless: Qt on an Xvfb display that pytest-xvfb starts (Debian's xvfb, Mesa's software OpenGL and
the xcb libraries Qt's platform plugin loads; `.ci/run` installs them). Not Qt's offscreen platform:
there napari's OpenGL canvas draws nothing (its screenshots are black). `BPHO_NAPARI_SCREENSHOT=PATH`
also writes the side-by-side screenshot there (README's docs/napari.png).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

if not os.environ.get("CI"):
    pytest.importorskip("napari", reason="pip install -e '.[napari]'")

import tifffile  # noqa: E402

from bpho import io  # noqa: E402
from bpho.config import PredictConfig, TrainConfig  # noqa: E402
from bpho.predict import predict_files  # noqa: E402
from bpho.train import train  # noqa: E402

from conftest import build_world, run_bpho  # noqa: E402

NET = dict(model={"encoder": "resnet18", "decoder_widths": (32, 16, 16, 8, 8)}, batch_size=8)
WIDGET = "Super-resolve"


@pytest.fixture(autouse=True)
def _display():
    """An X display (Xvfb) for Qt and napari's OpenGL canvas."""
    if not os.environ.get("DISPLAY"):
        if os.environ.get("CI"):
            pytest.fail("no X display for napari's OpenGL canvas; .ci/run should have installed Debian's xvfb "
                        "(pytest-xvfb starts it)")
        pytest.skip("no X display: apt-get install xvfb (pytest-xvfb starts it)")


@pytest.fixture(scope="module")
def world(demo, tmp_path_factory):
    """A BPHO_ROOT with its embedded MLflow store: a single-frame model (paired demo fields) and a
    multi-frame model (the demo movie), each trained for one epoch and registered as the CLI does."""
    root = tmp_path_factory.mktemp("napari-root")
    store = f"sqlite:///{root / 'mlflow.db'}"
    build_world(demo, root, sources=[("paired", "pairs", "paired"), ("movie", "demo_movie", "movie")],
                datasets=[("paired_001", "pairs", "nap", ["tile_sizes=64", "tiles_per_image=16", "valid_fraction=0.34"]),
                          ("movie_001", "demo_movie", "nap_movie",
                           ["tile_sizes=32", "tiles_per_image=4", "valid_fraction=0.34"])],
                tracking_uri=store)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BPHO_ROOT", str(root))
        mp.setenv("MLFLOW_TRACKING_URI", store)
        single = train(TrainConfig(dataset="nap", epochs=1, model_name="nap-single", **NET), progress=False)
        movie = train(TrainConfig(dataset="nap_movie", epochs=1, model_name="nap-movie", **NET), progress=False)
    return {"root": root, "store": store, "demo": demo, "single": single, "movie": movie}


@pytest.fixture
def env(world, monkeypatch):
    monkeypatch.setenv("BPHO_ROOT", str(world["root"]))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", world["store"])
    return world


def _notes():
    from napari.utils.notifications import notification_manager

    return notification_manager.records


def _widget(viewer):
    """The widget as napari's Plugins menu opens it (through the npe2 manifest)."""
    _dock, widget = viewer.window.add_plugin_dock_widget("bpho", WIDGET)
    return widget


def _predict(qtbot, widget, layer, uri: str, bicubic: bool = True):
    widget.layer.value, widget.model.value, widget.bicubic.value = layer, uri, bicubic
    widget.run_button.native.click()
    worker = widget.last_worker
    assert worker is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    return worker


def _errors_since(n: int) -> list:
    from napari.utils.notifications import NotificationSeverity

    return [r.message for r in _notes()[n:] if r.severity == NotificationSeverity.ERROR]


@pytest.mark.unit
def test_napari_finds_the_plugin_and_its_manifest_is_valid():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("bpho")
    assert {w.display_name for w in manifest.contributions.widgets} == {WIDGET}
    proc = subprocess.run([sys.executable, "-m", "npe2", "validate", "bpho"], capture_output=True, text=True)
    assert proc.returncode == 0 and "valid" in proc.stdout, proc.stdout + proc.stderr


def test_widget_lists_registered_models_with_their_lineage(env, make_napari_viewer):
    widget = _widget(make_napari_viewer())
    combo = widget.model.native
    labels = [combo.itemText(i) for i in range(combo.count())]
    assert labels == ["nap-movie v1 @champion", "nap-single v1 @champion"]
    widget.model.value = "models:/nap-single/1"
    m = env["single"].metrics
    info = widget.info.value
    assert info.startswith("dataset nap (")
    assert f"validation PSNR {m['valid_psnr_gain']:+.2f} dB over bicubic" in info
    assert f"{m['valid_psnr_gain_bilinear']:+.2f} dB over bilinear" in info
    assert f"FRC {m['valid_frc_nm']:.0f} nm" in info and env["single"].run_id in info


def test_movie_in_the_viewer_equals_bpho_predict(env, make_napari_viewer, qtbot, tmp_path):
    """The demo movie opened with the plugin's reader, super-resolved by the multi-frame model in the
    widget: the numbers `bpho predict` writes, scale / translate / lineage on the layer, and the
    screenshot of LR | bicubic | bpho."""
    viewer = make_napari_viewer(show=True)  # a window on the display: the canvas draws
    widget = _widget(viewer)
    movie = env["demo"] / "movie/lr/movie_000.czi"
    (lr,) = viewer.open(movie, plugin="bpho")
    lr.translate = (0.0, 3.0, -2.0)
    assert lr.axis_labels == ("t", "y", "x") and lr.data.shape[0] == 10
    _predict(qtbot, widget, lr, "models:/nap-movie/1")
    assert [layer.name for layer in viewer.layers] == ["movie_000", "movie_000 bpho 4x", "movie_000 bicubic 4x"]
    hr, cubic = viewer.layers[1], viewer.layers[2]
    assert widget.progress.value == widget.progress.max == 10 + 10  # 10 frames of one block, 10 bicubic frames

    out = tmp_path / "cli"
    proc = run_bpho("predict", "--model", "models:/nap-movie/1", movie, "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cli = io.read(out / "movie_000.tif").data[:, 0, 0]
    assert hr.data.shape == cli.shape == (10, 64, 64)
    np.testing.assert_allclose(hr.data, cli, rtol=1e-5, atol=1e-3 * float(np.abs(cli).max()))

    assert np.allclose(hr.scale, np.asarray(lr.scale) / [1, 4, 4])
    # the HR pixels tile each LR pixel: the first HR pixel's centre is 1.5 HR pixels before the LR one's
    assert np.allclose(hr.translate, np.asarray(lr.translate) - [0, 1.5, 1.5] * np.asarray(hr.scale))
    assert np.allclose(cubic.translate, hr.translate)
    assert np.allclose(cubic.scale, hr.scale)
    assert lr.scale[-1] == pytest.approx(io.open_image(movie).pixel_size[2])
    run = env["movie"]
    assert {k: hr.metadata[k] for k in ("model", "run_id", "dataset", "frames")} == {
        "model": "models:/nap-movie/1", "run_id": run.run_id, "dataset": "nap_movie", "frames": 5}
    assert len(hr.metadata["dataset_digest"]) >= 12

    viewer.layers.move(2, 1)  # the grid's cells follow the layer list: LR | bicubic | bpho
    assert [layer.name for layer in viewer.layers] == ["movie_000", "movie_000 bicubic 4x", "movie_000 bpho 4x"]
    viewer.grid.shape, viewer.grid.stride, viewer.grid.enabled = (1, 3), 1, True
    viewer.reset_view()
    viewer.camera.zoom = 0.9 * 400 / (hr.data.shape[-1] * hr.scale[-1])  # each image fills its third of the picture
    viewer.text_overlay.update({"visible": True, "text": "LR | bicubic | bpho (models:/nap-movie/1)",
                                "font_size": 14, "color": "white"})
    shot = viewer.screenshot(path=str(tmp_path / "napari.png"), size=(400, 1200), canvas_only=True, flash=False)
    thirds = [shot[100:300, 400 * i + 100:400 * i + 300, :3].astype(float) for i in range(3)]
    assert all(t.std() > 10 for t in thirds)  # three images drawn, not a blank canvas
    if os.environ.get("BPHO_NAPARI_SCREENSHOT"):
        shutil.copy(tmp_path / "napari.png", os.environ["BPHO_NAPARI_SCREENSHOT"])


def test_z_stack_plane_by_plane_and_cancel(env, make_napari_viewer, qtbot, tmp_path):
    """A z-stack TIFF: each plane predicted on its own, as `bpho predict` predicts the same file;
    Cancel stops a prediction and adds nothing."""
    fields = [io.read(p).data[0, 0, 0] for p in sorted((env["demo"] / "paired/lr").glob("*.czi"))]
    stack = np.stack(fields)[:, :48, :40].astype(np.uint16)
    path = tmp_path / "stack.tif"
    io.tiff.write_imagej(path, stack[None, None], (0.3, 0.14, 0.14), None)
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    (layer,) = viewer.open(path, plugin="bpho")
    assert layer.axis_labels == ("z", "y", "x") and np.allclose(layer.scale, (0.3, 0.14, 0.14))
    _predict(qtbot, widget, layer, "models:/nap-single/1", bicubic=False)
    hr = viewer.layers[-1]
    (written,) = predict_files("models:/nap-single/1", [path], tmp_path / "cli", PredictConfig(), progress=False)
    cli = io.read(written).data[0, 0]
    np.testing.assert_allclose(hr.data, cli, rtol=1e-5, atol=1e-3 * float(np.abs(cli).max()))
    assert np.allclose(hr.scale, (0.3, 0.035, 0.035))
    # the same planes as a multiscale layer (as OME-Zarr viewers open them): level 0 is predicted
    pyramid = viewer.add_image([layer.data, layer.data[:, ::2, ::2]], multiscale=True, name="pyramid",
                               scale=layer.scale, axis_labels=("z", "y", "x"))
    _predict(qtbot, widget, pyramid, "models:/nap-single/1", bicubic=False)
    assert viewer.layers[-1].name == "pyramid bpho 4x"
    np.testing.assert_allclose(viewer.layers[-1].data, cli, rtol=1e-5, atol=1e-3 * float(np.abs(cli).max()))

    n, before = len(_notes()), len(viewer.layers)
    widget.layer.value, widget.model.value = layer, "models:/nap-single/1"
    worker = widget.run()
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert worker.abort_requested and len(viewer.layers) == before
    assert [r.message for r in _notes()[n:]] == ["stopped: nothing was added"]


def test_bad_input_is_one_notification_and_nothing_added(env, make_napari_viewer, qtbot, tmp_path, monkeypatch):
    viewer = make_napari_viewer()
    widget = _widget(viewer)
    rgb = viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="screenshot", rgb=True)
    labels = viewer.add_labels(np.zeros((32, 32), np.uint8), name="cells")
    # a two-channel OME-TIFF: the model was trained on channel 'mito'; predicting its DAPI layer is refused
    field = io.read(next((env["demo"] / "paired/lr").glob("*.czi"))).data[0, 0, 0][:32, :32]
    two = tmp_path / "two.ome.tif"
    tifffile.imwrite(two, np.stack([field, field]), ome=True, metadata={
        "axes": "CYX", "Channel": {"Name": ["DAPI", "mito"]}, "PhysicalSizeX": 0.14, "PhysicalSizeY": 0.14})
    dapi, mito = viewer.open(two, plugin="bpho")
    assert (dapi.name, mito.name) == ("two DAPI", "two mito")
    expected = {
        "screenshot": "layer 'screenshot' is an RGB picture, not grey microscopy channels",
        "cells": "layer 'cells' is a Labels layer (a segmentation), not an image",
        "two DAPI": "layer two DAPI: channel 'DAPI', but models:/nap-single/1 was trained on channel 'mito'",
        "two mito": "layer two mito: 1 frames is shorter than the model's frame window (5)",
    }
    for layer, uri in ((rgb, "models:/nap-single/1"), (labels, "models:/nap-single/1"), (dapi, "models:/nap-single/1"),
                       (mito, "models:/nap-movie/1")):
        n, before = len(_notes()), len(viewer.layers)
        widget.layer.value, widget.model.value = layer, uri
        if widget.run() is not None:
            qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
        (error,) = _errors_since(n)
        assert error.startswith(expected[layer.name]) and "\n" not in error, error
        assert len(viewer.layers) == before

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    n, before = len(_notes()), len(viewer.layers)
    widget.refresh_models()
    assert _errors_since(n) == [f"tracking store http://127.0.0.1:{port}: unreachable; start the server or set "
                                "MLFLOW_TRACKING_URI to one that runs"]
    assert widget.model.choices == () and widget.run() is None
    assert _errors_since(n)[-1].startswith("no model chosen") and len(viewer.layers) == before
    viewer.layers.selection.active = mito  # the viewer goes on working
    assert viewer.layers[-1].name == "two mito"


def test_reader_opens_predictions_and_dataset_pictures(env, make_napari_viewer, tmp_path):
    lr = next((env["demo"] / "paired/lr").glob("*.czi"))
    px = io.open_image(lr).pixel_size[2]
    viewer = make_napari_viewer()
    datas = []
    for fmt, suffix in (("imagej", ".tif"), ("ome-tiff", ".ome.tif"), ("ome-zarr", ".ome.zarr")):
        (written,) = predict_files("models:/nap-single/1", [lr], tmp_path / fmt, PredictConfig(format=fmt),
                                   progress=False)
        assert written.name.endswith(suffix)
        (layer,) = viewer.open(written, plugin="bpho")
        assert layer.axis_labels == ("y", "x") and np.allclose(layer.scale, (px / 4, px / 4)), (fmt, layer.scale)
        datas.append(np.asarray(layer.data))
        if fmt == "ome-zarr":  # the lineage bpho predict wrote
            assert layer.metadata["model"] == "models:/nap-single/1"
            assert layer.metadata["run_id"] == env["single"].run_id
    assert all(np.array_equal(datas[0], d) for d in datas[1:])
    pictures = viewer.open(env["root"] / "datasets/nap", plugin="bpho")
    names = [p.name for p in pictures]
    assert "nap previews/tiles_64" in names and sum(n.startswith("nap qc/") for n in names) == 3
    assert all(p.rgb and p.data.ndim == 3 for p in pictures)


@pytest.mark.e2e
def test_widget_on_a_team_server_with_credentials(env, make_napari_viewer, tmp_path, monkeypatch):
    """A `bpho server --auth`: the widget lists its models with the credentials from the environment, as the
    CLI does; a wrong password is one notification line. (Predicting goes through `tracking.download_model`,
    the CLI's path, tested on servers elsewhere.)"""
    from mlflow import MlflowClient

    from bpho import server, tracking

    from conftest import _free_port, start_mlflow_server, stop

    monkeypatch.setenv("BPHO_ROOT", str(tmp_path / "server-root"))
    monkeypatch.setenv(server.ADMIN_PASSWORD_ENV, "correct-horse-battery-staple")
    port = _free_port()
    argv, server_env = server.command(port=port, auth=True, workers=1)
    proc = start_mlflow_server(tmp_path / "server-root" / "server", port, argv=argv,
                               env={**server_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    url = f"http://127.0.0.1:{port}"
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "correct-horse-battery-staple")
        single = env["single"]
        client = MlflowClient(url, registry_uri=url)  # a version as `bpho train` registers it (no weights needed)
        run = client.create_run(client.create_experiment("bpho-train"))
        client.create_registered_model("nap-team")
        version = client.create_model_version("nap-team", f"runs:/{run.info.run_id}/model", run.info.run_id).version
        tracking.describe_version("nap-team", str(version), run.info.run_id, "nap", "d" * 64, single.metrics)
        tracking.name_champion("nap-team", str(version))

        widget = _widget(make_napari_viewer())
        assert widget.model.choices == ("models:/nap-team/1",)
        assert widget.model.native.itemText(0) == "nap-team v1 @champion"
        assert widget.info.value.startswith("dataset nap (dddddddddddd); validation PSNR "
                                            f"{single.metrics['valid_psnr_gain']:+.2f} dB over bicubic")

        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "guess")
        n = len(_notes())
        widget.refresh_models()
        (error,) = _errors_since(n)
        assert error == (f"tracking store {url}: the server refused the credentials (HTTP 401); check "
                         "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
        assert widget.model.choices == ()
    finally:
        stop(proc)
