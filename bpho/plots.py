"""Matplotlib for files only (no display): every PNG bpho saves is drawn through `pyplot()`."""


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported on first use (keeps the CLI start fast)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_grid(png, rows, labels=(), title=None, cmap="magma", gap=4) -> None:
    """A PNG of equally sized panels without a figure (fast even for big images): `rows` of
    (Y, X) images in [0, 1] (coloured by `cmap`) or (Y, X, 3) RGB in [0, 1]; `labels` name the
    columns (written in the first row's panels), `title` goes above."""
    import numpy as np
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    colour = colormaps[cmap]
    h, w = rows[0][0].shape[:2]
    top = 14 if title else 0
    canvas = np.ones((top + len(rows) * (h + gap) - gap, max(map(len, rows)) * (w + gap) - gap, 3))
    for i, row in enumerate(rows):
        for j, panel in enumerate(row):
            panel = np.clip(np.nan_to_num(np.asarray(panel, np.float64)), 0, 1)
            y, x = top + i * (h + gap), j * (w + gap)
            canvas[y:y + h, x:x + w] = panel if panel.ndim == 3 else colour(panel)[..., :3]
    image = Image.fromarray((canvas * 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((2, 1), title, fill=(0, 0, 0))
    for j, text in enumerate(labels):
        draw.text((j * (w + gap) + 3, top + 2), text, fill=(255, 255, 255))
    image.save(png)
