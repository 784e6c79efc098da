"""What every PNG chart shares: matplotlib without a display, and an atomic PNG write."""

from __future__ import annotations

from pathlib import Path

from edgekd.io import atomic_path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on a server or in CI
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, plt, path: str | Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
