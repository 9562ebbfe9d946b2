"""matplotlib, set up once: the Agg backend (no display on servers and CI) and the
one way a figure is written to a PNG."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)


def save_figure(fig, path, *, dpi: int = 120, tight: bool = True) -> Path:
    """Lay out (unless the caller placed the axes itself), write ``path`` as a PNG and free the figure."""
    if tight:
        fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
