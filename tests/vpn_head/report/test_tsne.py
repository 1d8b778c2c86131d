"""The report's t-SNE figure of f_e and P_e (``vpn_head.report.tsne``); the whole report is in test_report.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imread

from tests.helpers import SMALL_MODEL, tiny_config, write_tiny_cache
from vpn_head.data.clips import CachedClips
from vpn_head.engine.checkpoints import load_checkpoint, model_from_checkpoint
from vpn_head.model.config import VPNConfig
from vpn_head.model.vpn import VPN
from vpn_head.report.run_report import main, make_report
from vpn_head.report.tsne import NoEmbeddingError, class_colours, clip_embeddings, draw_tsne, embed_tsne
from vpn_head.train.head import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _clusters(n_per_class: int, classes: int, dim: int = 8, seed: int = 0):
    """f_e and P_e of ``classes`` well separated clusters, a clip's pose close to its video."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (classes, dim))
    labels = np.repeat(np.arange(classes), n_per_class)
    f_e = centres[labels] + rng.normal(0, 0.3, (len(labels), dim))
    p_e = f_e + rng.normal(0, 0.3, f_e.shape)
    return f_e, p_e, labels


def test_the_map_keeps_classes_apart_and_poses_by_their_videos():
    f_e, p_e, labels = _clusters(6, 3)
    emb = embed_tsne(f_e, p_e, labels)
    assert emb.video.shape == emb.pose.shape == (18, 2) and emb.perplexity == pytest.approx(35 / 3)
    points = np.concatenate([emb.video, emb.pose])
    both = np.concatenate([labels, labels])
    centroids = np.stack([points[both == c].mean(axis=0) for c in range(3)])
    nearest = np.linalg.norm(points[:, None] - centroids[None], axis=2).argmin(axis=1)
    assert (nearest == both).all()  # every point lies nearest its own class
    pair = np.linalg.norm(emb.video - emb.pose, axis=1).mean()
    across = np.linalg.norm(centroids[:, None] - centroids[None], axis=2)[np.triu_indices(3, 1)].min()
    assert pair < across / 3
    again = embed_tsne(f_e, p_e, labels)
    assert np.array_equal(again.video, emb.video)  # seeded: the same run gives the same figure


def test_bad_inputs_are_refused():
    f_e, p_e, labels = _clusters(1, 2)
    with pytest.raises(ValueError, match="needs at least 3"):
        embed_tsne(f_e, p_e, labels)
    with pytest.raises(ValueError, match="do not match"):
        embed_tsne(f_e, p_e[:, :3], labels)
    model = VPN(VPNConfig.for_dataset("nucla", "v3_12", variant="i3d", **SMALL_MODEL))
    with pytest.raises(NoEmbeddingError, match="'i3d' has no spatial embedding"):
        clip_embeddings(model, None, np.arange(3))


def test_the_figure_draws_a_legend_per_class_and_marker(tmp_path):
    f_e, p_e, labels = _clusters(4, 3)
    fig = Figure(figsize=(9, 7), dpi=100)
    FigureCanvasAgg(fig)
    caption = draw_tsne(fig, embed_tsne(f_e, p_e, labels), ("a", "b", "c"), "title", "test")
    fig.savefig(tmp_path / "t.png")
    image = imread(tmp_path / "t.png")
    assert image.shape[:2] == (700, 900) and image.std() > 0.01
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "c"]
    assert len(ax.collections) == 2  # circles (video) and triangles (pose)
    assert caption.startswith("t-SNE of the spatial embeddings of 12 test clips (3 classes)")
    assert len(set(class_colours(np.arange(25)).values())) == 25  # many classes stay distinct


def test_embeddings_of_a_trained_vpn_and_the_cli_refusal_for_i3d(tmp_path, capsys):
    cache = write_tiny_cache(tmp_path / "nucla", videos={"train": 2, "test": 1})
    train(tiny_config(cache, tmp_path / "runs", epochs=1, run_name="vpn"))
    train(tiny_config(cache, tmp_path / "runs", epochs=1, run_name="i3d", variant="i3d"))
    path = tmp_path / "runs" / "vpn" / "best.pt"
    model = model_from_checkpoint(load_checkpoint(path), path)
    clips = CachedClips(cache, "v3_12", "test", dataset="nucla")
    f_e, p_e = clip_embeddings(model, clips, np.arange(len(clips)))
    features, poses, _, _ = clips[0]
    with torch.no_grad():
        out = model.eval()(features[None].float(), poses[None])
    assert f_e.shape == p_e.shape == (len(clips), SMALL_MODEL["embed_dim"])
    assert np.allclose(f_e[0], out.f_e[0].numpy()) and np.allclose(p_e[0], out.p_e[0].numpy())
    assert main(["--runs-dir", str(tmp_path / "runs"), "--run", "i3d", "--samples", "0"]) == 0
    index = (tmp_path / "runs" / "i3d" / "report" / "index.md").read_text()
    assert "no spatial embedding (f_e, P_e): no t-SNE figure" in index
    assert not (tmp_path / "runs" / "i3d" / "report" / "tsne_embedding.png").exists()
    make_report(tmp_path / "runs" / "vpn", samples=0, tsne_clips=2)
    index = (tmp_path / "runs" / "vpn" / "report" / "index.md").read_text()
    assert "The test split has 2 clip(s): too few for the t-SNE figure (at least 3)." in index
    with pytest.raises(SystemExit) as exit_info:
        main(["--runs-dir", str(tmp_path / "runs"), "--run", "vpn", "--tsne-clips", "-1"])
    assert exit_info.value.code == 2 and "--tsne-clips must be >= 0" in capsys.readouterr().err
