"""The napari plugin (npe2 manifest ``bpho/napari.yaml``): a widget that super-resolves image layers
with the registered models of the lab's MLflow store, and a reader for bpho's images and datasets.
Needs ``pip install "bpho[napari]"``; nothing else in bpho imports napari."""
