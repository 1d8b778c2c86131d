"""``make explain``: where a trained head looks in one video (the paper's figures 5a and 5b) and what it predicts.

The video goes through ``make predict``'s path (``vpn_head.infer.predict``: the run's cache config, the same clips,
features and max-pooled scores). The clip the max-pool took for the predicted class is drawn:

- ``<id>_explain.png``: a strip of the person crop, one frame per A_T step (the middle frame of the step's source
  frames), A_S upsampled over it with its opacity scaled by that step's A_T (fig. 5b); the pose backbone's joint
  activations as a joints x pose-time heatmap, joints in the body's topological order (a walk of the skeleton
  graph from the centre joint, so neighbours sit together; fig. 5a); the top-k classes as bars;
- ``<id>_explain.mp4``: every frame of that clip's crop with the same overlay (8 frames per second);
- ``<id>_explain.json``: top-k, the clip drawn, A_T, the joint order.

Joint activations are the mean over channels of the GCN backbone's last conv layer (128 x J x t_p, ReLU) for the
first body. An ``i3d`` run has no pose attention and no pose backbone; an LSTM backbone has no per-joint map:
the figure says so and shows the crops and the top-k only.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.datasets.registry import DatasetSpec
from pipeline.features.inputs import find_inputs
from pipeline.features.sample import SampleError, prepare_sample
from pipeline.utils.fileio import atomic_write_json
from vpn_head.infer.predict import ERRORS, Predictor, open_run, parse_command, score_sample, top_k
from vpn_head.report.figures import new_figure, save_png, upsample_attention

log = logging.getLogger(__name__)

VIDEO_FPS = 8
"""Frames per second of the explain MP4 (a 64-frame clip plays in 8 s)."""


class ExplainError(ValueError):
    """The input cannot be explained (not one video, or it failed a stage)."""


def topological_order(spec: DatasetSpec) -> list[int]:
    """Joints in a depth-first walk of the skeleton graph from the centre joint (lowest index first at forks);
    joints the graph does not reach follow in index order."""
    neighbours: dict[int, list[int]] = {j: [] for j in range(spec.num_joints)}
    for a, b in spec.edges:
        neighbours[a].append(b)
        neighbours[b].append(a)
    order, stack, seen = [], [spec.centre_joint], set()
    while stack:
        joint = stack.pop()
        if joint in seen:
            continue
        seen.add(joint)
        order.append(joint)
        stack.extend(sorted(neighbours[joint], reverse=True))
    return order + [j for j in range(spec.num_joints) if j not in seen]


def joint_activations(predictor: Predictor, poses: torch.Tensor) -> np.ndarray | None:
    """The GCN backbone's last-layer activation of one clip's first body, mean over channels: (J, t_p); None for
    variants or backbones without one."""
    encoder = predictor.model.pose_encoder
    if encoder is None or not hasattr(encoder.backbone, "convs"):
        return None
    kept: list[torch.Tensor] = []
    hook = encoder.backbone.convs.register_forward_hook(lambda _m, _i, out: kept.append(out.detach()))
    try:
        with torch.no_grad():
            encoder.backbone(poses[None, 0, :3].to(predictor.device))  # (1, 3, J, t_p) -> h*
    finally:
        hook.remove()
    return kept[0][0].mean(dim=0).float().cpu().numpy()  # (128, J, t_p) -> (J, t_p)


def crop_frames(clip: torch.Tensor) -> np.ndarray:
    """A prepared clip (3, T, S, S) in [-1, 1] as uint8 RGB frames (T, S, S, 3)."""
    return ((clip.permute(1, 2, 3, 0).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)


def overlay(frame: np.ndarray, heat: np.ndarray | None, strength: float) -> np.ndarray:
    """``frame`` (S, S, 3) uint8 with a jet-coloured ``heat`` (S, S) in [0, 1] blended at ``strength`` x 0.6."""
    if heat is None:
        return frame
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]  # (S, S, 3) RGB
    alpha = 0.6 * float(strength) * heat[..., None]  # (S, S, 1)
    return (frame * (1 - alpha) + colour * alpha).round().astype(np.uint8)


def _heat(a_s: np.ndarray | None, size: int) -> np.ndarray | None:
    if a_s is None:
        return None
    up = upsample_attention(a_s, size)  # (S, S)
    return (up - up.min()) / max(float(up.max() - up.min()), 1e-12)


def plot_explain(frames: np.ndarray, frame_indices: np.ndarray, a_s: np.ndarray | None, a_t: np.ndarray | None,
                 steps: int, activations: np.ndarray | None, order: list[int], joint_names: tuple[str, ...],
                 best: list[dict], title: str, note: str, path: Path) -> None:
    """The explain strip (see the module doc) as one PNG."""
    heat = _heat(a_s, frames.shape[1])
    per_step = len(frames) // steps
    width = max(12.0, 1.75 * steps)
    fig = new_figure(width, width / steps + 5.2)
    grid = fig.add_gridspec(2, steps, height_ratios=(width / steps, 4.2), hspace=0.3)
    peak = float(a_t.max()) if a_t is not None else 1.0
    for t in range(steps):
        ax = fig.add_subplot(grid[0, t])
        middle = t * per_step + per_step // 2
        strength = a_t[t] / peak if a_t is not None else 0.0
        ax.imshow(overlay(frames[middle], heat, strength))
        label = f"frames {frame_indices[t * per_step]}-{frame_indices[(t + 1) * per_step - 1]}"
        ax.set_title(label + (f"\nA_T {a_t[t]:.3f}" if a_t is not None else ""), fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    half = max(steps // 2, 1)
    joints_ax = fig.add_subplot(grid[1, :half + 1])
    if activations is not None:
        image = joints_ax.imshow(activations[order], aspect="auto", cmap="magma", interpolation="nearest")
        joints_ax.set_yticks(range(len(order)), [joint_names[j] for j in order], fontsize=6)
        joints_ax.set_xticks(range(activations.shape[1]))
        joints_ax.tick_params(axis="x", labelsize=6)
        joints_ax.set_xlabel("pose time step (t_p poses over the clip)", fontsize=8)
        joints_ax.set_title("pose backbone joint activations (topological order)", fontsize=9)
        fig.colorbar(image, ax=joints_ax, fraction=0.04, pad=0.02)
    else:
        joints_ax.axis("off")
        joints_ax.text(0.5, 0.5, note, ha="center", va="center", fontsize=9, wrap=True)
    bars = fig.add_subplot(grid[1, half + 2:] if steps > half + 2 else grid[1, -1])
    names = [b["class"] for b in best][::-1]
    bars.barh(range(len(best)), [b["probability"] for b in best][::-1], color="tab:blue")
    bars.set_yticks(range(len(best)), names, fontsize=7)
    bars.set_xlim(0, 1)
    bars.set_xlabel("max-pooled softmax", fontsize=8)
    bars.set_title(f"top-{len(best)}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.97, top=0.9, bottom=0.07, wspace=0.35)
    save_png(fig, path)


def write_video(frames: np.ndarray, a_s: np.ndarray | None, a_t: np.ndarray | None, steps: int, path: Path) -> int:
    """Every crop frame with the A_S overlay scaled by its step's A_T, as an MP4 (``mp4v``); returns the frame
    count."""
    heat = _heat(a_s, frames.shape[1])
    per_step = len(frames) // steps
    peak = float(a_t.max()) if a_t is not None else 1.0
    size = frames.shape[1]
    tmp = path.with_name(f".{path.stem}.partial.mp4")  # OpenCV picks the container by the suffix
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), VIDEO_FPS, (size, size))
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write an MP4 to {tmp}")
    try:
        for i, frame in enumerate(frames):
            t = min(i // per_step, steps - 1)
            shown = np.array(overlay(frame, heat, a_t[t] / peak if a_t is not None else 0.0), order="C")
            if a_t is not None:
                cv2.putText(shown, f"A_T {a_t[t]:.2f}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
            writer.write(np.ascontiguousarray(shown[..., ::-1]))  # BGR
    except BaseException:
        writer.release()
        tmp.unlink(missing_ok=True)
        raise
    writer.release()
    os.replace(tmp, path)
    return len(frames)


def explain(predictor: Predictor, source: str, skeleton: str | None, out_dir: Path, topk: int = 5,
            data_root: str | None = None) -> dict:
    """Explain one video (see the module doc); returns what ``<id>_explain.json`` holds.

    Raises:
        ExplainError: the input is not one video, or it failed a stage (the stage and reason).
    """
    inputs = find_inputs(predictor.cache_config.dataset, source, skeleton, data_root)
    if len(inputs.rows) != 1:
        raise ExplainError(f"explain takes one video; INPUT {source} holds {len(inputs.rows)} samples")
    row = inputs.rows[0]
    try:
        sample = prepare_sample(row, inputs.data_root, predictor.spec, predictor.cache_config)
        record: dict[str, np.ndarray] = {}
        clip_probs, video_probs = score_sample(predictor, sample, record)
    except SampleError as err:
        raise ExplainError(f"{row['sample_id']}: failed at {err.stage}: {err.reason}") from None
    best = top_k(video_probs, predictor.class_names, topk)
    clip = int(clip_probs[:, best[0]["label"]].argmax())  # the clip the max-pool took for the predicted class
    config = predictor.model.config
    a_s = record["attention_spatial"][clip] if "attention_spatial" in record else None  # (7, 7)
    a_t = record["attention_temporal"][clip] if "attention_temporal" in record else None  # (8,)
    activations = joint_activations(predictor, torch.from_numpy(sample.poses[clip]))
    note = ("" if activations is not None else
            f"variant {config.variant}: no pose attention and no pose backbone" if config.variant == "i3d" else
            f"pose backbone {config.pose_backbone}: no per-joint activation map")
    order = topological_order(predictor.spec)
    frames = crop_frames(sample.clips[clip])  # (T, S, S, 3)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{row['sample_id']}_explain"
    truth = f" (true: {row['action']})" if row.get("action") else ""
    title = (f"{predictor.run_dir.name} ({config.variant}) on {row['sample_id']}{truth}: {best[0]['class']} "
             f"{best[0]['probability']:.3f}; clip {clip + 1}/{len(clip_probs)}")
    plot_explain(frames, sample.frame_indices[clip], a_s, a_t, config.feature_time, activations, order,
                 predictor.spec.joints, best, title, note, out_dir / f"{stem}.png")
    count = write_video(frames, a_s, a_t, config.feature_time, out_dir / f"{stem}.mp4")
    summary = {"sample_id": str(row["sample_id"]), "variant": config.variant, "clip": clip, "top_k": best,
               "attention_temporal": None if a_t is None else [float(v) for v in a_t],
               "joint_order": [predictor.spec.joints[j] for j in order], "video_frames": count, "note": note,
               "png": str(out_dir / f"{stem}.png"), "mp4": str(out_dir / f"{stem}.mp4")}
    atomic_write_json(out_dir / f"{stem}.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    args, run_dir = parse_command("python -m vpn_head.infer.explain", __doc__, argv)
    try:
        predictor = open_run(args, run_dir)
        summary = explain(predictor, args.input, args.skeleton, Path(args.out or run_dir / "explain"), args.topk,
                          args.data_root)
    except (ExplainError, *ERRORS) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if summary["note"]:
        print(f"note: {summary['note']}; the figure shows the crops and the top-k only")
    print(summary["png"])
    print(summary["mp4"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
