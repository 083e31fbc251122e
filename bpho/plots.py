"""Matplotlib for files only (no display): every PNG bpho saves is drawn through `pyplot()`."""


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported on first use (keeps the CLI start fast)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
