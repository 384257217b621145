"""Figures as PNG files: a t-SNE of ID features, anchors and outlier vectors; image grids from the store.

The t-SNE puts every point on the unit sphere first (features already are;
anchors and outlier vectors are rescaled to ||T(y)||), so directions are
compared, which is what the cosine-trained encoder and the densities use.
matplotlib's Agg backend is used so plots work on headless machines.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .bank import FeatureBank  # noqa: E402
from .errors import InputError  # noqa: E402


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _subsample(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    keep = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=int)


def tsne_embedding(
    bank: FeatureBank,
    outliers: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    max_per_class: int = 200,
    perplexity: float = 30.0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """2-D t-SNE coordinates of (subsampled) features, all anchors and (subsampled) outlier vectors."""
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    fi = _subsample(bank.labels, max_per_class, rng)
    parts = [_unit(bank.features[fi]), _unit(bank.anchors)]
    out_vectors = out_labels = np.zeros(0)
    if outliers is not None:
        vectors, labels = np.asarray(outliers[0]), np.asarray(outliers[1], dtype=np.int64)
        if vectors.ndim != 2 or vectors.shape[1] != bank.dim or len(labels) != len(vectors):
            raise InputError(
                "outliers",
                f"expected vectors (M, {bank.dim}) and M class indices, got {vectors.shape} and {labels.shape}",
            )
        oi = _subsample(labels, max_per_class, rng)
        out_vectors, out_labels = _unit(vectors[oi]), labels[oi]
        parts.append(out_vectors)
    x = np.concatenate(parts)
    perplexity = min(perplexity, max(2.0, (len(x) - 1) / 3))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    n_f, n_a = len(fi), len(bank.anchors)
    return {
        "features": xy[:n_f],
        "feature_labels": bank.labels[fi],
        "anchors": xy[n_f : n_f + n_a],
        "outliers": xy[n_f + n_a :],
        "outlier_labels": out_labels,
    }


def plot_tsne(
    bank: FeatureBank,
    out_path: str | Path,
    outliers: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    max_per_class: int = 200,
    perplexity: float = 30.0,
    seed: int = 0,
    title: str | None = None,
) -> Path:
    """Scatter ID features (dots), outlier vectors (crosses) and anchors (stars), coloured by class."""
    emb = tsne_embedding(bank, outliers, max_per_class=max_per_class, perplexity=perplexity, seed=seed)
    cmap = plt.get_cmap("tab10" if bank.n_classes <= 10 else "tab20")
    color = lambda c: cmap(int(c) % cmap.N)  # noqa: E731
    fig, ax = plt.subplots(figsize=(8, 8))
    x, y = emb["features"].T  # (2, n): unpacked by name, as scatter takes x and y before its keywords
    ax.scatter(x, y, s=6, c=[color(c) for c in emb["feature_labels"]], alpha=0.5, label="ID features")
    if len(emb["outliers"]):
        x, y = emb["outliers"].T
        ax.scatter(x, y, s=18, marker="x", c=[color(c) for c in emb["outlier_labels"]], label="outlier vectors")
    x, y = emb["anchors"].T
    ax.scatter(
        x,
        y,
        s=220,
        marker="*",
        c=[color(c) for c in range(bank.n_classes)],
        edgecolors="black",
        linewidths=0.8,
        label="anchors T(y)",
    )
    if bank.n_classes <= 20:
        for c, (px, py) in enumerate(emb["anchors"]):
            ax.annotate(str(bank.class_names[c]), (px, py), xytext=(4, 4), textcoords="offset points", fontsize=8)
    ax.set_title(title or f"t-SNE of features, anchors and outliers ({bank.n_classes} classes)")
    ax.legend(loc="best", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, out_path)


def plot_grid(
    store_root: str | Path,
    dataset: str,
    out_path: str | Path,
    *,
    per_class: int = 8,
    classes: list[str] | None = None,
    thumb: float = 1.2,
) -> Path:
    """A grid of generated images, one row per class (first ``per_class`` of each), from the result store
    (a folder or an ``s3://bucket/prefix`` URL)."""
    from .store.results import ResultStore

    store = ResultStore(store_root)
    if dataset not in store.datasets():
        raise InputError("dataset", f"{dataset!r} not in the store at {store_root} (has {store.datasets()})")
    by_class: dict[str, list] = {}
    for record in sorted(store.records(dataset), key=lambda r: (r.class_index, r.image_id)):
        by_class.setdefault(record.class_name, []).append(record)
    if classes:
        unknown = [c for c in classes if c not in by_class]
        if unknown:
            raise InputError("classes", f"{unknown} have no images in {dataset!r} (has {sorted(by_class)})")
        by_class = {c: by_class[c] for c in classes}
    if not by_class:
        raise InputError("dataset", f"{dataset!r} holds no images")
    rows, cols = len(by_class), per_class
    fig, axes = plt.subplots(rows, cols, figsize=(cols * thumb, rows * thumb), squeeze=False)
    for r, (name, records) in enumerate(by_class.items()):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(records):
                ax.imshow(np.asarray(store.open_image(records[c].path).convert("RGB")))
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(f"{dataset}: generated outliers per class")
    return _save(fig, out_path)


def _save(fig, out_path: str | Path) -> Path:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100, format="png")
    plt.close(fig)
    return out


def plot_ood_gain(summary: dict, out: str | Path, *, metrics: tuple[str, ...] = ("near_fpr95", "far_fpr95")) -> Path:
    """Bar chart of the OOD-gain benchmark: one panel per (profile, metric), one bar per row, error bars = std
    over seeds; the row's paired Δ to its baseline is written above each bar (percent points)."""
    profiles = list(summary)
    if not profiles:
        raise InputError("summary", "no results to plot")
    labels = {
        "near_fpr95": "near-OOD FPR95 (%) ↓",
        "far_fpr95": "far-OOD FPR95 (%) ↓",
        "near_auroc": "near-OOD AUROC (%) ↑",
        "far_auroc": "far-OOD AUROC (%) ↑",
    }
    n_rows = max(len(summary[p]) for p in profiles)
    size = (4 + 0.45 * n_rows * len(metrics), 3.6 * len(profiles))
    fig, axes = plt.subplots(len(profiles), len(metrics), figsize=size, squeeze=False)
    for i, profile in enumerate(profiles):
        rows = list(summary[profile])
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            mean = np.array([100 * summary[profile][r][metric]["mean"] for r in rows])
            std = np.array([100 * summary[profile][r][metric]["std"] for r in rows])
            colors = ["0.55" if summary[profile][r]["baseline"] is None else "tab:blue" for r in rows]
            ax.bar(np.arange(len(rows)), mean, yerr=std, capsize=3, color=colors)
            for k, r in enumerate(rows):
                d = summary[profile][r].get(f"delta_{metric}")
                if d:
                    ax.annotate(f"{100 * d['mean']:+.1f}", (k, mean[k] + std[k]), ha="center", va="bottom", fontsize=7)
            ax.set_xticks(np.arange(len(rows)), rows, rotation=60, ha="right", fontsize=7)
            ax.set_title(f"{profile}: {labels.get(metric, metric)}", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str, out: str | Path) -> Path:
    """ROC curves of several scores on one OOD set: ``curves[score] = (fpr, tpr, auroc)``, ID the positive class
    (``training.metrics.roc_curve``); the chance line dashed, the 95 % TPR of FPR95 dotted."""
    if not curves:
        raise InputError("scores", "no curves to plot")
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    drawn: list[tuple[np.ndarray, np.ndarray]] = []
    for name, (fpr, tpr, auc) in sorted(curves.items(), key=lambda kv: -kv[1][2]):
        # a curve that coincides with one drawn already (phi = energy) is dashed over it, so both stay visible
        same = any(np.array_equal(fpr, f) and np.array_equal(tpr, t) for f, t in drawn)
        ax.plot(fpr, tpr, lw=1.2, ls=(0, (4, 3)) if same else "-", label=f"{name} ({100 * auc:.1f})")
        drawn.append((fpr, tpr))
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=0.8)
    ax.axhline(0.95, ls=":", color="0.4", lw=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="FPR (OOD accepted)", ylabel="TPR (ID accepted)", title=title)
    ax.legend(fontsize=6 if len(curves) > 8 else 8, loc="lower right", ncol=2 if len(curves) > 12 else 1)
    return _save(fig, out)


def plot_score_histograms(
    id_scores: dict[str, np.ndarray], ood_scores: dict[str, np.ndarray], title: str, out: str | Path
) -> Path:
    """One panel per score: its ID test scores against one OOD set's (higher = more ID), as densities."""
    names = [n for n in ood_scores if n in id_scores]
    if not names:
        raise InputError("scores", "no scores to plot")
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        both = np.concatenate([id_scores[name], ood_scores[name]])
        bins = np.linspace(both.min(), both.max(), 41) if np.ptp(both) > 0 else 10
        ax.hist(id_scores[name], bins=bins, density=True, alpha=0.55, label="ID")
        ax.hist(ood_scores[name], bins=bins, density=True, alpha=0.55, label="OOD")
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{title} (higher = more ID)", fontsize=9)
    return _save(fig, out)
