"""One PNG line plot over the block width W, as the benchmarks draw them."""

from __future__ import annotations

from pathlib import Path


def plot_over_width(path: Path, widths: list[int], lines: list[tuple[str, str, list[float]]], *,
                    ylabel: str, title: str, log2_x: bool = False) -> None:
    """`lines`: (label, matplotlib format, values), one value per width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, fmt, values in lines:
        ax.plot(widths, values, fmt, label=label)
    ax.set_xlabel("paths W")
    ax.set_ylabel(ylabel)
    if log2_x:
        ax.set_xscale("log", base=2)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
