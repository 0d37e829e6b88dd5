"""One paper style for every figure the toolkit draws.

Every figure is drawn inside :func:`paper_style` so that sweep figures and probe figures share fonts, sizes and
colours, and saved with :func:`save_figure` (vector PDF for the paper, 300-dpi PNG for the HTML report).

The style is applied through ``matplotlib.rc_context`` rather than by changing the global ``rcParams``: other code
in the same process (notebooks, tests, the probes' own plots) keeps its own settings.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator

import matplotlib
import matplotlib.pyplot as plt

# matplotlib subsets fonts into every PDF through fontTools, which logs each pruned table at INFO ("GDEF pruned"):
# noise in any run whose root logger is at INFO (every Hydra job)
logging.getLogger("fontTools.subset").setLevel(logging.WARNING)

# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision deficiencies and in
# greyscale print order. Black is moved last so the first series is never mistaken for axis ink.
OKABE_ITO = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
)
BASELINE_COLOUR = "#555555"  # the baseline variant is drawn in neutral grey so the eye goes to the ablations

# Perceptually uniform, colour-blind-safe colour maps: sequential for magnitudes, diverging for signed effects.
SEQUENTIAL_CMAP = "viridis"
DIVERGING_CMAP = "RdBu_r"
HEATMAP_CMAP = "inferno"  # attention overlays: dark = no attention, so the image shows through

# Text widths of the usual two-column venues (NeurIPS/ICML/CVPR/ACL are all within a few points of these).
ONE_COLUMN_IN = 3.5
TWO_COLUMN_IN = 7.0
DPI = 300  # PNG resolution; the PDF is vector and resolution-free

PAPER_RC = {
    "font.family": "serif",
    # STIX matches Times (the body font of most venues) and ships with matplotlib, so no system font is needed.
    "font.serif": ["STIXGeneral", "Times New Roman", "DejaVu Serif"],
    "mathtext.fontset": "stix",
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "figure.titlesize": 9,
    "axes.prop_cycle": matplotlib.cycler(color=list(OKABE_ITO)),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "errorbar.capsize": 2,
    "legend.frameon": False,
    "image.cmap": SEQUENTIAL_CMAP,
    # constrained layout keeps the stated figure size; bbox_inches="tight" would silently change it.
    "figure.constrained_layout.use": True,
    "savefig.dpi": DPI,
    "savefig.bbox": None,
    # TrueType (42) rather than Type 3 fonts: required by IEEE/ACM PDF checks and keeps text editable.
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "svg.fonttype": "none",
}


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    """Draw (and save) inside this context to get the paper style without touching global settings."""
    with matplotlib.rc_context(PAPER_RC):
        yield


def figsize(layout: str | float = "one", aspect: float = 0.75) -> tuple[float, float]:
    """(width, height) in inches: ``layout`` is "one"/"two" column or a width in inches; height = width × aspect."""
    widths = {"one": ONE_COLUMN_IN, "two": TWO_COLUMN_IN}
    if isinstance(layout, str):
        if layout not in widths:
            raise ValueError(f"layout must be 'one', 'two' or a width in inches, got {layout!r}")
        width = widths[layout]
    else:
        width = float(layout)
    return (width, round(width * aspect, 3))


def new_figure(layout: str | float = "one", aspect: float = 0.75, **subplots_kw):
    """``plt.subplots`` with a paper size; call inside :func:`paper_style`."""
    return plt.subplots(figsize=figsize(layout, aspect), **subplots_kw)


def save_figure(fig, path_stem: str | Path, *, close: bool = True) -> list[Path]:
    """Write ``<stem>.pdf`` (vector) and ``<stem>.png`` (300 dpi) at the figure's own size; returns both paths.

    The PNG is exactly ``inches × 300`` pixels on each side because the size is fixed by the figure (no tight
    bounding box). ``close`` frees the figure, which long sweeps producing many figures need.
    """
    stem = Path(path_stem)
    if stem.suffix in (".pdf", ".png"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + ".pdf"), stem.with_name(stem.name + ".png")]
    with paper_style():
        # Metadata without a creation date keeps PDFs byte-stable across rebuilds of the same report.
        fig.savefig(paths[0], format="pdf", metadata={"CreationDate": None})
        fig.savefig(paths[1], format="png", dpi=DPI)
    if close:
        plt.close(fig)
    return paths
