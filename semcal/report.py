"""Figures and tables for people: label-distribution charts and result summaries."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # figures are written to files; no display is needed or assumed

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402


def plot_label_distributions(frequencies: pd.DataFrame, title: str, sort_by: str | None = None):
    """Grouped bars of normalised label frequencies, one bar colour per set (column).

    `frequencies` has one row per label and one column per set (general, real, filtered,
    ...), each column summing to 1. Labels are sorted by `sort_by` (descending), so the
    eye can follow how far each set departs from the reference.
    """
    if sort_by is not None:
        frequencies = frequencies.sort_values(sort_by, ascending=False)
    long = frequencies.rename_axis("label").reset_index().melt(id_vars="label", var_name="set", value_name="frequency")
    n_labels = len(frequencies)
    width = min(max(6.0, 0.55 * n_labels * max(1, frequencies.shape[1]) / 2), 40.0)
    figure, axes = plt.subplots(figsize=(width, 4.8))
    sns.barplot(data=long, x="label", y="frequency", hue="set", ax=axes)
    axes.set_title(title)
    axes.set_xlabel("")
    axes.set_ylabel("normalised frequency")
    rotation = 0 if n_labels <= 5 and max(len(str(v)) for v in frequencies.index) <= 14 else 45
    plt.setp(axes.get_xticklabels(), rotation=rotation, ha="right" if rotation else "center")
    axes.legend(title="")
    figure.tight_layout()
    return figure
