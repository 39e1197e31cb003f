"""Figure style for every normgrad figure: palette, sizes, fonts, labels and deterministic saving.

One module owns the look so that the same policy has the same colour in every figure and the
files are byte-identical when regenerated from the same inputs.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import matplotlib as mpl
import seaborn as sns
from matplotlib.figure import Figure

from analog.policies import POLICY_ORDER
from study.tables import (
    FACTOR_LABELS,  # noqa: F401 - re-exported for the figure modules
    is_percent,
    replace_atomically,
)
from study.tables import factor_label as shared_factor_label

# --- sizes (inches) --------------------------------------------------------------------------------
# the paper's column and text widths (paper/main.tex: letter paper, 0.75 in margins, 0.25 in column
# gap): figures are drawn at these widths and included at natural size, so their text prints at the
# FONT_* sizes below (>= 7 pt)
ONE_COLUMN = 3.375
TWO_COLUMN = 7.0
MAX_HEIGHT = 9.0
DPI = 300

# --- fonts (points): 7-9 pt everywhere ------------------------------------------------------------
FONT_SMALL = 7.0
FONT_MEDIUM = 8.0
FONT_LARGE = 9.0

# --- colours: Okabe & Ito (2008), colour-blind safe -------------------------------------------------
OKABE_ITO = {
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
    "black": "#000000",
}
POLICY_COLORS = {
    "ste": OKABE_ITO["blue"],
    "exact": OKABE_ITO["vermillion"],
    "zero": OKABE_ITO["green"],
}
OTHER_POLICY_COLOR = "#8C8C8C"  # neutral grey for user policies
_EXTRA_POLICY_COLORS = (OKABE_ITO["orange"], OKABE_ITO["sky_blue"], OKABE_ITO["purple"])
POLICY_LINESTYLES = {"exact": "-", "ste": "--", "zero": ":"}  # so that overlapping lines stay visible
POLICY_MARKERS = {"exact": "o", "ste": "s", "zero": "^"}
BAND_COLOR = "0.85"  # equivalence band
REFERENCE_COLOR = "0.25"  # zero line and other references
DIVERGING_CMAP = "RdBu_r"  # effect heatmap: blue = b better (ste), red = a better (exact); symmetric
SEQUENTIAL_CMAP = "cividis"  # accuracies and ranks

# --- verdicts: symbols, so that the verdict never rests on colour alone --------------------------
VERDICT_SYMBOLS = {"identical": "≡", "equivalent": "≈", "different": "≠", "trivial": "≃", "inconclusive": "?"}
VERDICT_LEGEND = "≡ identical   ≈ equivalent   ≠ different   ≃ trivial (< δ)   ? inconclusive"

# --- labels ---------------------------------------------------------------------------------------
METRIC_LABELS = {
    "test_acc": "Test accuracy (%)",
    "val_acc": "Validation accuracy (%)",
    "train_acc": "Training accuracy (%)",
    "best_val_acc": "Best validation accuracy (%)",
    "test_acc_at_best_val": "Test accuracy at best validation epoch (%)",
    "test_loss": "Test loss (cross-entropy)",
    "val_loss": "Validation loss (cross-entropy)",
    "train_loss": "Training loss (cross-entropy)",
    "grad_cosine": "Cosine similarity to exact gradient",
    "grad_norm_ratio": "Gradient norm ratio ‖g‖ / ‖g_exact‖",
    "sat_weight": "Weights altered (fraction)",
    "sat_signal_in": "Input signals altered (fraction)",
    "sat_signal_out": "Output signals altered (fraction)",
}
_COMPACT_PREFIX = {
    "weight_norm": "W ",
    "signal_norm": "S ",
    "norm": "",
    "precision": "prec ",
    "leakage": "leak ",
    "weight_policy": "W ",
    "signal_policy": "S ",
}
SITE_LETTER = {"weight": "W", "signal": "S"}


def metric_label(metric: str) -> str:
    """Axis label of a metric with its unit ("Test accuracy (%)")."""
    return METRIC_LABELS.get(metric, metric.replace("_", " ").capitalize())


def metric_name(metric: str) -> str:
    """A metric's name for running text, without unit ("test accuracy")."""
    label = metric_label(metric).split(" (")[0]
    return label[0].lower() + label[1:]


def diff_label(metric: str) -> str:
    """Axis label of a paired difference of a metric ("Δ test accuracy (pp)")."""
    base = metric_label(metric)
    if is_percent(metric):
        base = base.replace(" (%)", "")
        return f"Δ {base[0].lower()}{base[1:]} (pp)"
    return f"Δ {base[0].lower()}{base[1:]}"


def factor_label(column: str) -> str:
    """Human name of a factor column ("Signal normalization"; `study.tables.factor_label`)."""
    return shared_factor_label(column)


def level_label(column: str, value: Any, compact: bool = False) -> str:
    """Human label of a factor level; `compact` adds a short prefix so that joined labels stay clear."""
    text = str(value)
    if column == "precision" and text == "none":
        text = "full"
    if not compact:
        return text
    if column == "leakage" and text == "none":
        return "no leak"
    return f"{_COMPACT_PREFIX.get(column, '')}{text}"


def combo_label(weight: str, signal: str) -> str:
    """Label of a (weight policy, signal policy) combination."""
    return f"W {weight} · S {signal}"


# --- colours and line styles ---------------------------------------------------------------------
def policy_order(policies: Iterable[str]) -> list[str]:
    """Known policies first in a fixed order, then the others alphabetically."""
    names = set(policies)
    return [p for p in POLICY_ORDER if p in names] + sorted(names - set(POLICY_ORDER))


def policy_palette(policies: Iterable[str]) -> dict[str, str]:
    """Colour of every policy: fixed for ste/exact/zero, grey for the first user policy, then extras."""
    palette = {}
    extra = iter((OTHER_POLICY_COLOR, *_EXTRA_POLICY_COLORS))
    for name in policy_order(policies):
        palette[name] = POLICY_COLORS.get(name) or next(extra, OTHER_POLICY_COLOR)
    return palette


def policy_color(name: str) -> str:
    """Fixed colour of a policy (grey for policies other than ste/exact/zero)."""
    return POLICY_COLORS.get(name, OTHER_POLICY_COLOR)


def combo_styles(weights: list[str], signals: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """Line style of each (weight, signal) combination.

    When both sites vary the colour is the signal policy's and the line style / marker the weight
    policy's; when only one site varies the colour is that site's policy.
    """
    palette = policy_palette([*weights, *signals])
    both = len(weights) > 1 and len(signals) > 1
    linestyles = iter(("-.", (0, (5, 1)), (0, (1, 1))))
    markers = iter(("D", "v", "P"))
    names = policy_order([*weights, *signals])
    ls = {p: POLICY_LINESTYLES.get(p) or next(linestyles, "-") for p in names}
    mk = {p: POLICY_MARKERS.get(p) or next(markers, "o") for p in names}
    styles = {}
    for w in weights:
        for s in signals:
            if both:
                style = {"color": palette[s], "linestyle": ls[w], "marker": mk[w], "label": combo_label(w, s)}
            elif len(weights) > 1:
                style = {"color": palette[w], "linestyle": ls[w], "marker": mk[w], "label": f"W {w}"}
            else:
                style = {"color": palette[s], "linestyle": ls[s], "marker": mk[s], "label": f"S {s}"}
            styles[(w, s)] = style
    return styles


def combo_legend_note(weights: list[str], signals: list[str]) -> str:
    """Caption sentence explaining the colour / line-style code of `combo_styles`."""
    if len(weights) > 1 and len(signals) > 1:
        return (
            "Colour: signal-site policy (S); line style and marker: weight-site policy (W), "
            "solid/circle = exact, dashed/square = ste, dotted/triangle = zero."
        )
    site = "weight" if len(weights) > 1 else "signal"
    return (
        f"Colour and line style: {site}-site policy (solid = exact, dashed = ste, dotted = zero; the other "
        f"site's policy is fixed)."
    )


# --- rcParams --------------------------------------------------------------------------------------
def rc_params() -> dict[str, Any]:
    """The matplotlib rcParams of every figure (seaborn paper context, ticks style, 7-9 pt fonts)."""
    rc: dict[str, Any] = {}
    rc.update(sns.axes_style("ticks"))
    rc.update(sns.plotting_context("paper"))
    rc.update(
        {
            "font.family": ["sans-serif"],
            "font.sans-serif": ["DejaVu Sans"],  # ships with matplotlib: same glyphs everywhere
            "font.size": FONT_SMALL,
            "axes.labelsize": FONT_MEDIUM,
            "axes.titlesize": FONT_MEDIUM,
            "figure.titlesize": FONT_LARGE,
            "xtick.labelsize": FONT_SMALL,
            "ytick.labelsize": FONT_SMALL,
            "legend.fontsize": FONT_SMALL,
            "legend.title_fontsize": FONT_SMALL,
            "legend.frameon": False,
            "axes.linewidth": 0.6,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "lines.linewidth": 1.0,
            "lines.markersize": 3.5,
            "patch.linewidth": 0.5,
            "xtick.major.width": 0.6,
            "ytick.major.width": 0.6,
            "xtick.major.size": 2.5,
            "ytick.major.size": 2.5,
            "xtick.minor.size": 1.5,
            "ytick.minor.size": 1.5,
            "axes.titlepad": 3.0,
            "axes.labelpad": 2.0,
            "axes.prop_cycle": mpl.cycler(color=[POLICY_COLORS[p] for p in POLICY_ORDER]),
            "figure.dpi": 100,
            "savefig.dpi": DPI,
            "pdf.fonttype": 42,  # TrueType, never Type 3
            "ps.fonttype": 42,
            "pdf.compression": 6,
            "svg.hashsalt": "normgrad",
            "svg.fonttype": "path",
            "image.cmap": SEQUENTIAL_CMAP,
            "figure.constrained_layout.h_pad": 0.02,
            "figure.constrained_layout.w_pad": 0.02,
        }
    )
    return rc


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Context in which figures are created and saved with the normgrad style."""
    with mpl.rc_context(rc_params()):
        yield


def new_figure(width: float, height: float, **kwargs: Any) -> Figure:
    """A constrained-layout figure (not registered with pyplot, so nothing leaks between figures)."""
    return Figure(figsize=(width, min(height, MAX_HEIGHT)), layout="constrained", **kwargs)


PDF_METADATA = {"CreationDate": None, "Producer": None, "Creator": None, "ModDate": None}
PNG_METADATA = {"Software": None}


def save_figure(fig: Figure, directory: Path, name: str) -> list[Path]:
    """Write `name.pdf` and `name.png` (300 dpi) without per-run metadata; returns both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    pdf, png = directory / f"{name}.pdf", directory / f"{name}.png"
    common = {"bbox_inches": "tight", "pad_inches": 0.03, "facecolor": "white"}
    with style():
        for path, extra in ((pdf, {"metadata": PDF_METADATA}), (png, {"dpi": DPI, "metadata": PNG_METADATA})):
            buf = io.BytesIO()  # written whole, then renamed: an interrupted run leaves no half figure
            fig.savefig(buf, format=path.suffix[1:], **extra, **common)
            replace_atomically(path, buf.getvalue())
    return [pdf, png]
