"""matplotlib for processes without a display (Ray workers, CI, the CLI): torch-free."""

from __future__ import annotations


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
