"""The report's t-SNE figure of the spatial embeddings f_e (video) and P_e (pose), as in the paper.

A ``vpn`` head projects every clip's time-summed feature map to f_e and its pose attention to P_e in one
embedding space (``vpn_head.model.embedding``, eq. 4); the embedding loss pulls the two of a clip together. The figure
embeds both sets of a split's clips *jointly* with scikit-learn's ``TSNE`` (one 2-d map for 2n points), colours
every point by its clip's class and draws video points as circles, pose points as triangles, so one sees whether
the classes separate and whether each pose lands by its video. A thin line joins a clip's two points when there
are at most ``PAIR_LINES_MAX`` clips.

t-SNE is run with a fixed seed, PCA initialisation and one thread, so the same run gives the same figure; the
perplexity is ``min(30, (2n - 1) / 3)`` (it must stay below the number of points).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from sklearn.manifold import TSNE

from vpn_head.data.clips import CachedClips

MIN_CLIPS = 3
"""Fewer clips than this give no t-SNE figure (6 points are the least that make a map worth reading)."""
PAIR_LINES_MAX = 50
"""Up to this many clips, each clip's f_e and P_e points are joined by a thin line."""
CLASS_LEGEND_MAX = 20
"""Up to this many classes the figure has a legend of class names."""
BATCH = 64
"""Clips per forward pass."""


class NoEmbeddingError(ValueError):
    """The model has no spatial embedding (variants ``i3d`` and ``attention``)."""


@dataclass(frozen=True)
class EmbeddingMap:
    """The t-SNE map of n clips.

    Attributes:
        video: (n, 2) map positions of f_e.
        pose: (n, 2) map positions of P_e.
        labels: (n,) the clips' protocol labels.
        perplexity: the t-SNE perplexity used.
    """

    video: np.ndarray
    pose: np.ndarray
    labels: np.ndarray
    perplexity: float


@torch.no_grad()
def clip_embeddings(model: torch.nn.Module, clips: CachedClips, indices: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """f_e and P_e of the clips ``indices`` of ``clips`` (eval mode, CPU).

    Args:
        model: a VPN with a spatial embedding (variant ``vpn``).
        clips: the split.
        indices: (n,) clip indices into ``clips``.

    Returns:
        ``(f_e, p_e)``, each (n, embed_dim) float64.

    Raises:
        NoEmbeddingError: the model's variant has no embedding.
    """
    if getattr(model, "embedding", None) is None:
        raise NoEmbeddingError(f"variant {model.config.variant!r} has no spatial embedding (f_e, P_e)")
    model.eval()
    video, pose = [], []
    for start in range(0, len(indices), BATCH):
        items = [clips[int(i)] for i in indices[start:start + BATCH]]
        features = torch.stack([item[0] for item in items]).float()  # (b, C, T, H, W)
        poses = torch.stack([item[1] for item in items])  # (b, 2, 3, J, t_p)
        out = model(features, poses)
        video.append(out.f_e.double().numpy())  # (b, embed_dim)
        pose.append(out.p_e.double().numpy())  # (b, embed_dim)
    return np.concatenate(video), np.concatenate(pose)


def embed_tsne(f_e: np.ndarray, p_e: np.ndarray, labels: np.ndarray, seed: int = 0) -> EmbeddingMap:
    """Joint 2-d t-SNE of the video and pose embeddings.

    Args:
        f_e: (n, D) video embeddings.
        p_e: (n, D) pose embeddings.
        labels: (n,) the clips' labels.
        seed: t-SNE's random state.

    Raises:
        ValueError: shapes disagree, or fewer than ``MIN_CLIPS`` clips.
    """
    if f_e.shape != p_e.shape or f_e.ndim != 2 or len(labels) != len(f_e):
        raise ValueError(f"f_e {f_e.shape}, p_e {p_e.shape} and labels ({len(labels)},) do not match")
    n = len(f_e)
    if n < MIN_CLIPS:
        raise ValueError(f"{n} clip(s): a t-SNE map needs at least {MIN_CLIPS}")
    points = np.concatenate([f_e, p_e])  # (2n, D)
    perplexity = float(min(30.0, (2 * n - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed,
                n_jobs=1)
    xy = tsne.fit_transform(points)  # (2n, 2)
    return EmbeddingMap(xy[:n], xy[n:], np.asarray(labels), perplexity)


def class_colours(classes: np.ndarray) -> dict[int, tuple[float, ...]]:
    """A distinct colour per class present (tab10 / tab20, else evenly spaced on ``turbo``)."""
    from matplotlib import colormaps

    classes = sorted(int(c) for c in np.unique(classes))
    if len(classes) <= 10:
        cmap, steps = colormaps["tab10"], [k / 10 + 0.05 for k in range(len(classes))]
    elif len(classes) <= 20:
        cmap, steps = colormaps["tab20"], [k / 20 + 0.025 for k in range(len(classes))]
    else:
        cmap, steps = colormaps["turbo"], np.linspace(0.05, 0.95, len(classes)).tolist()
    return {c: tuple(cmap(s)) for c, s in zip(classes, steps)}


def draw_tsne(fig: Figure, emb: EmbeddingMap, class_names: tuple[str, ...], title: str, split: str) -> str:
    """Draw the map on ``fig``; returns the figure's caption.

    Args:
        fig: an empty figure.
        emb: the t-SNE map.
        class_names: the protocol's class names, by label.
        title: the figure title.
        split: the split the clips come from (for the caption).
    """
    ax = fig.add_subplot()
    colours = class_colours(emb.labels)
    n = len(emb.labels)
    if n <= PAIR_LINES_MAX:
        for (x0, y0), (x1, y1), label in zip(emb.video, emb.pose, emb.labels):
            ax.plot([x0, x1], [y0, y1], color=colours[int(label)], alpha=0.25, linewidth=0.7, zorder=1)
    point_colours = [colours[int(label)] for label in emb.labels]
    size = 36 if n <= 200 else 14
    ax.scatter(emb.video[:, 0], emb.video[:, 1], c=point_colours, marker="o", s=size, edgecolors="black",
               linewidths=0.4, zorder=2)
    ax.scatter(emb.pose[:, 0], emb.pose[:, 1], c=point_colours, marker="^", s=size, edgecolors="black",
               linewidths=0.4, zorder=3)
    markers = [Line2D([], [], marker="o", color="grey", linestyle="", markeredgecolor="black", label="video f_e"),
               Line2D([], [], marker="^", color="grey", linestyle="", markeredgecolor="black", label="pose P_e")]
    first = ax.legend(handles=markers, loc="upper left", fontsize=8, framealpha=0.8)
    if len(colours) <= CLASS_LEGEND_MAX:
        ax.add_artist(first)
        swatches = [Line2D([], [], marker="s", color=colour, linestyle="", label=class_names[c])
                    for c, colour in colours.items()]
        ax.legend(handles=swatches, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, title="class",
                  title_fontsize=8, borderaxespad=0.0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"t-SNE of {n} {split} clips' f_e and P_e (perplexity {emb.perplexity:.3g})", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    legend = "class legend" if len(colours) <= CLASS_LEGEND_MAX else "no class legend (too many classes)"
    lines = "; a line joins each clip's pair" if n <= PAIR_LINES_MAX else ""
    return (f"t-SNE of the spatial embeddings of {n} {split} clips ({len(colours)} classes): video f_e as circles, "
            f"pose P_e as triangles, coloured by class ({legend}){lines}")
