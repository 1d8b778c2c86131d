"""The VPN head's configuration: one frozen dataclass holding every value that changes results.

``VPNConfig.for_dataset`` fills the dataset facts (classes, joints, skeleton edges, ``t_p``) from
``pipeline.datasets.registry``, so the skeleton graph stays data. ``to_dict`` / ``from_dict`` round-trip through JSON
(run directories and HDF5 attrs store the config that way).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

from pipeline.datasets.registry import get_dataset
from pipeline.i3d.spec import FEATURE_SHAPE

VARIANTS: tuple[str, ...] = ("i3d", "attention", "vpn")
"""Paper Table 1 rows: ``i3d`` (l1, no pose), ``attention`` (l2, pose attention without the embedding loss),
``vpn`` (l3, attention + spatial embedding)."""
POSE_BACKBONES: tuple[str, ...] = ("gcn", "lstm")
EMBEDDING_LOSSES: tuple[str, ...] = ("euclid", "kl_fe_pe", "kl_pe_fe", "bikl", "contrastive", "l1_squared")
PAPER_READING: dict[str, str] = {"pose_pool": "mean", "temporal_scale": "sum1", "embedding_loss": "euclid",
                                 "embedding_centre": "none", "feature_norm": "none"}
"""The paper's reading of the fields whose defaults depart from it (``VPNConfig(**PAPER_READING)``)."""
OFFICIAL_READING: dict[str, object] = {
    "graph": "official", "gcn_layer": "filter_bank", "pose_residual": "concat", "pose_pool": "official",
    "pose_bodies": "first", "attention_hidden": 256, "temporal_hidden": 128, "attention_init": "zero",
    "temporal_scale": "sum1", "embedding_input": "a_s", "embedding_form": "official", "embedding_centre": "none",
    "embedding_loss": "l1_squared", "lambda1": 0.99, "attention_reg": "batch_sum", "classifier": "official",
    "feature_norm": "none"}
"""The authors' Keras code (``srijandas07/VPN``, ``embedding_gcnn_attention_model.py``, ``compute_adjacency.py``,
``train_ST_gcnn_attention.py``) for every field that is a head choice; docs/readings.md has the table. Not
reproduced: the scrambled spatial inflate (a bug), the 2-step Mixed_5c of 16-frame clips, BGR pixels, random pose
frames (cache choices)."""
READINGS: dict[str, dict[str, object]] = {"paper": dict(PAPER_READING), "official": dict(OFFICIAL_READING)}
"""``READING=paper|official``: the ``VPNConfig`` overrides of each reading (no reading: the defaults)."""
GRAPHS: tuple[str, ...] = ("paper", "official")
GCN_LAYERS: tuple[str, ...] = ("bare", "filter_bank")
POSE_RESIDUALS: tuple[str, ...] = ("add", "concat")
POSE_BODIES: tuple[str, ...] = ("max", "first")
EMBEDDING_FORMS: tuple[str, ...] = ("paper", "official")
ATTENTION_REGS: tuple[str, ...] = ("mean", "batch_sum")
CLASSIFIERS: tuple[str, ...] = ("linear", "official")
SAVED_BEFORE: dict[str, str] = {"feature_norm": "none"}
"""Fields whose default changed after configs were saved without them: a saved config that lacks one was written
when it had this value (``VPNConfig.from_saved``), so old runs resume and old checkpoints load as they were."""
POSE_POOLS: tuple[str, ...] = ("mean", "max_dense", "official")
TEMPORAL_SCALES: tuple[str, ...] = ("sum1", "mean1")
ATTENTION_INITS: tuple[str, ...] = ("default", "zero")
ATTENTION_POOLINGS: tuple[str, ...] = ("sum", "normalised")
EMBEDDING_INPUTS: tuple[str, ...] = ("z1", "a_s")
EMBEDDING_CENTRES: tuple[str, ...] = ("none", "spatial", "batch")
FEATURE_NORMS: tuple[str, ...] = ("none", "batch")
SPATIAL_ATTENTIONS: tuple[str, ...] = ("grid", "joints")


@dataclass(frozen=True)
class VPNConfig:
    """Hyper-parameters of the VPN head (paper section 3, defaults from the paper where it gives them).

    Five defaults depart from the paper's text, each for a measured reason (README, "Does the pose steer the
    head?"): ``pose_pool="max_dense"``, ``temporal_scale="mean1"``, ``embedding_loss="contrastive"``,
    ``embedding_centre="batch"`` and ``feature_norm="batch"``. ``PAPER_READING`` holds the paper's values of those
    fields.

    Attributes:
        num_classes: number of action classes of the protocol.
        num_joints: J, joints per pose.
        edges: 0-based undirected bones of the skeleton graph.
        t_p: poses per clip (paper: 20 NTU, 30 Smarthome, 5 N-UCLA).
        variant: ``i3d`` | ``attention`` | ``vpn`` (see ``VARIANTS``).
        pose_backbone: ``gcn`` (paper) | ``lstm`` (the paper's LSTM-vs-GCN ablation).
        coupler: couple spatial and temporal attention into one spatio-temporal map (eq. 3); when False the two
            attentions are applied one after the other (see ``vpn_head.model.attention.apply_attention``).
        embedding_loss: ``euclid`` (paper) | ``kl_fe_pe`` | ``kl_pe_fe`` | ``bikl`` (Table 3 ablation) |
            ``contrastive`` (not in the paper: InfoNCE over the batch between the normalised f_e and P_e, so a
            pose must match its own video better than the batch's other videos; see ``losses.py``).
        pose_pool: how the pose backbone's (128, J, t_p) map becomes h*: ``mean`` (global average over joints
            and time, the paper's reading) or ``max_dense`` (max over time, flatten the joints, dense 256 -> 128,
            as in the authors' Keras code): ``mean`` discards which joint moved.
        temporal_scale: ``sum1`` (paper: A_T = softmax(z2) sums to 1 over the T steps, so the attended term
            A_T A_S f is at most 1/T of the residual f on average) or ``mean1`` (A_T = T softmax(z2), averaging 1,
            so attention can double a cell's weight).
        attention_residual: keep the ``+ f`` of eq. 3 (True, the paper): attention can then only add to a place
            (at most doubling it with ``temporal_scale="mean1"``), never remove a distractor; False gives
            ``f' = A_ST * f``.
        attention_pooling: ``sum`` (the paper: the head's global average pool of f' = M f, so the features' scale
            grows with the attention) or ``normalised`` (f' = M f / mean(M): the pool is the attention-weighted
            average of f, so attention chooses *where* to pool instead of how much to add).
        attention_init: ``default`` (PyTorch's Linear init) or ``zero`` (the last layer of each attention
            branch starts at zero, as in the authors' code: A_S = 0.5 and A_T uniform for every video at init).
        embedding_input: what the pose side of the embedding projects: ``z1`` (paper eq. 4) or ``a_s``
            (sigmoid(z1), as in the authors' code).
        embedding_centre: ``none`` (paper), ``spatial`` (subtract each channel's mean over the 7 x 7 grid from f_s
            before T_v) or ``batch`` (standardise every (channel, cell) of f_s over the videos, BatchNorm without
            affine parameters): without it f_e describes what all videos share (the features' non-negative level
            and the person's silhouette), not how this video differs.
        embedding_temperature: softmax temperature of the ``contrastive`` embedding loss.
        spatial_attention: how A_S is made: ``grid`` (the paper: A_S = sigmoid(z1), one free logit per cell of the
            S x S grid) or ``joints`` (not in the paper: z1 has one logit per joint of each body, w = softmax(z1), and
            A_S = sum_j w_j K_j, where K_j is a Gaussian bump of ``joint_sigma`` cells at joint j's position in the
            crop, averaged over the t_p pose times; the pose branch chooses *which* joints matter and the
            skeleton's 2D geometry says *where* they are). Needs the cache's crop joints
            (``pipeline.crops.joints``), fed as pose channels 3-4.
        joint_sigma: width in grid cells of each joint's bump for ``spatial_attention="joints"``.
        feature_norm: what the classifier sees after the global average pool: ``none`` (the pooled features, the
            paper) or ``batch`` (each channel standardised over the batch, BatchNorm without affine parameters,
            running statistics at test time). Pooled Mixed_5c features are non-negative with a large shared level
            and small differences between videos; without standardisation SGD at the paper's rate leaves the
            classifier below a logistic-regression probe on the same features (measured in the README, "Does the
            pose steer the head?").
        alpha: adjacency weight of two joints joined by a bone.
        beta: adjacency weight of two joints not joined by a bone (``graph="paper"``) or of the authors' 6
            "extrinsic" pairs (``graph="official"``).
        graph: ``paper`` (the paper's text: ``beta`` on every non-bone pair, so after normalisation each joint
            takes ~81 % of its input from non-bone joints) or ``official`` (the authors' ``compute_adjacency.py``:
            their 24 NTU bones at ``alpha``, ``beta`` only on 6 extrinsic pairs, 0 elsewhere; for a skeleton other
            than NTU's 25 joints their function returns all zeros, so the normalised graph is the identity).
        gcn_layer: ``bare`` (``A G_t W_t``) or ``filter_bank`` (the authors' ``MultiGraphCNN`` over [I; A]:
            ``G_t W0_t + A G_t W1_t + b_t``, then ELU and dropout 0.3).
        pose_residual: ``add`` (a 1 x 1 conv of the raw pose added to the graph output) or ``concat`` (the raw xyz
            concatenated as 3 more channels, the authors' code).
        pose_bodies: ``max`` (every present body through the backbone, h* the max over bodies) or ``first``
            (body 0 only, the authors' loader).
        temporal_hidden: width of the temporal branch's tanh layer; 0: ``attention_hidden`` (the authors: 128).
        embedding_form: ``paper`` (f_e = T_v sum_t f, P_e = T_p z1, linear maps of unit spectral norm, optional
            centring) or ``official`` (the authors': Dense(embed_dim, sigmoid, bias) on the flattened Mixed_5c with
            its time axis kept, and on the pose side; no norm constraint; ``embedding_centre`` applies to the
            flattened map as it does to f_s).
        attention_reg: L_A as ``mean`` (per-sample ||A_S||_2 + sum_t (1 - A_T)^2, averaged) or ``batch_sum`` (the
            authors' Keras activity regulariser: (1 - sum A_S)^2 + (1 - sum A_T)^2 with each sum over the whole
            batch; the A_T term is constant because the softmax sums to the batch size).
        classifier: ``linear`` (dropout then one linear layer) or ``official`` (dropout, the 1 x 1 conv to the
            classes, then a dense layer classes -> classes, the authors' code).
        feature_channels: C of the I3D Mixed_5c feature map (defaults: ``pipeline.i3d.spec.FEATURE_SHAPE``, the
            paper's clip; a cache of other clips needs ``i3d_spec.feature_shape(clip_len, crop_size)``).
        feature_time: T of the feature map (the temporal attention has this many steps).
        feature_size: H = W of the feature map the spatial attention is defined on.
        gcn_channels: output width of the per-time-step graph convolution.
        embed_dim: size of the common visual/pose embedding space. Default 256: large enough to hold the
            49-d spatial attention logits, small enough to keep ``T_v`` (C * 49 x embed_dim) moderate.
        attention_hidden: width of the tanh hidden layer of each attention branch (eq. 2). Default 256.
        dropout: dropout before the classifier.
        lambda1: weight of the classification loss against the embedding loss (eq. 6).
        lambda2: weight of the attention regulariser (eq. 6).
    """

    num_classes: int
    num_joints: int
    edges: tuple[tuple[int, int], ...]
    t_p: int = 20
    variant: str = "vpn"
    pose_backbone: str = "gcn"
    coupler: bool = True
    embedding_loss: str = "contrastive"
    alpha: float = 5.0
    beta: float = 2.0
    feature_channels: int = FEATURE_SHAPE[0]
    feature_time: int = FEATURE_SHAPE[1]
    feature_size: int = FEATURE_SHAPE[2]
    gcn_channels: int = 64
    embed_dim: int = 256
    attention_hidden: int = 256
    dropout: float = 0.3
    lambda1: float = 0.8
    lambda2: float = 1e-5
    pose_pool: str = "max_dense"
    temporal_scale: str = "mean1"
    attention_residual: bool = True
    attention_pooling: str = "sum"
    attention_init: str = "default"
    embedding_input: str = "z1"
    embedding_centre: str = "batch"
    embedding_temperature: float = 0.1
    feature_norm: str = "batch"
    spatial_attention: str = "grid"
    joint_sigma: float = 0.75
    graph: str = "paper"
    gcn_layer: str = "bare"
    pose_residual: str = "add"
    pose_bodies: str = "max"
    temporal_hidden: int = 0
    embedding_form: str = "paper"
    attention_reg: str = "mean"
    classifier: str = "linear"

    @property
    def pose_channels(self) -> int:
        """Channels of the pose input: 3 (x, y, z), plus the crop joints' (x, y) for ``spatial_attention="joints"``."""
        return 5 if self.spatial_attention == "joints" else 3

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field and what it must be."""
        _choice("variant", self.variant, VARIANTS)
        _choice("pose_backbone", self.pose_backbone, POSE_BACKBONES)
        _choice("embedding_loss", self.embedding_loss, EMBEDDING_LOSSES)
        _choice("pose_pool", self.pose_pool, POSE_POOLS)
        _choice("temporal_scale", self.temporal_scale, TEMPORAL_SCALES)
        _choice("attention_init", self.attention_init, ATTENTION_INITS)
        _choice("attention_pooling", self.attention_pooling, ATTENTION_POOLINGS)
        _choice("embedding_input", self.embedding_input, EMBEDDING_INPUTS)
        _choice("embedding_centre", self.embedding_centre, EMBEDDING_CENTRES)
        _choice("feature_norm", self.feature_norm, FEATURE_NORMS)
        _choice("spatial_attention", self.spatial_attention, SPATIAL_ATTENTIONS)
        _choice("graph", self.graph, GRAPHS)
        _choice("gcn_layer", self.gcn_layer, GCN_LAYERS)
        _choice("pose_residual", self.pose_residual, POSE_RESIDUALS)
        _choice("pose_bodies", self.pose_bodies, POSE_BODIES)
        _choice("embedding_form", self.embedding_form, EMBEDDING_FORMS)
        _choice("attention_reg", self.attention_reg, ATTENTION_REGS)
        _choice("classifier", self.classifier, CLASSIFIERS)
        if isinstance(self.temporal_hidden, bool) or not isinstance(self.temporal_hidden, int) \
                or self.temporal_hidden < 0:
            raise ValueError(f"VPNConfig.temporal_hidden must be an int >= 0, got {self.temporal_hidden!r}")
        if not is_positive_number(self.joint_sigma):
            raise ValueError(f"VPNConfig.joint_sigma must be a finite number > 0, got {self.joint_sigma!r}")
        if not is_positive_number(self.embedding_temperature):
            raise ValueError(f"VPNConfig.embedding_temperature must be a finite number > 0, "
                             f"got {self.embedding_temperature!r}")
        for name in ("num_classes", "num_joints", "t_p", "feature_channels", "feature_time", "feature_size",
                     "gcn_channels", "embed_dim", "attention_hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VPNConfig.{name} must be a positive int, got {value!r}")
        for name in ("coupler", "attention_residual"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"VPNConfig.{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("alpha", "beta", "lambda2"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"VPNConfig.{name} must be a finite number >= 0, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"VPNConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.lambda1 <= 1.0:
            raise ValueError(f"VPNConfig.lambda1 must be in [0, 1], got {self.lambda1!r}")
        if not isinstance(self.edges, tuple):
            raise ValueError(f"VPNConfig.edges must be a tuple of (i, j) pairs (from_dict accepts lists), "
                             f"got {type(self.edges).__name__}")
        for edge in self.edges:
            if (not isinstance(edge, tuple) or len(edge) != 2
                    or not all(isinstance(j, int) and 0 <= j < self.num_joints for j in edge)):
                raise ValueError(f"VPNConfig.edges: {edge!r} is not a pair of joint indices in "
                                 f"[0, {self.num_joints})")
            if edge[0] == edge[1]:
                raise ValueError(f"VPNConfig.edges: self-loop {edge!r}; the graph's diagonal is fixed to 0")

    @classmethod
    def for_dataset(cls, dataset: str, protocol: str, **overrides: Any) -> VPNConfig:
        """Build the config of ``dataset``/``protocol`` from the dataset registry.

        Args:
            dataset: registry name (``ntu60``, ``ntu120``, ``smarthome``, ``nucla``).
            protocol: one of the dataset's protocols (``cs``, ``cv``, ``cs1``, ...); sets ``num_classes``.
            **overrides: any other ``VPNConfig`` field (``variant="attention"``, ``embed_dim=512``, ...).

        Returns:
            The validated config.
        """
        spec = get_dataset(dataset)
        values: dict[str, Any] = dict(num_classes=len(spec.protocol_classes(protocol)),
                                      num_joints=spec.num_joints, edges=spec.edges, t_p=spec.t_p)
        values.update(overrides)
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (edges as a list of ``[i, j]`` lists)."""
        values = asdict(self)
        values["edges"] = [list(edge) for edge in self.edges]
        return values

    @classmethod
    def from_saved(cls, values: dict[str, Any]) -> VPNConfig:
        """``from_dict`` of a config a run or checkpoint saved: a field of ``SAVED_BEFORE`` it lacks takes the value
        it had when the config was written, not today's default."""
        return cls.from_dict({**SAVED_BEFORE, **values})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> VPNConfig:
        """Inverse of ``to_dict``: accepts edges as lists, rejects unknown keys, validates."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown VPNConfig field(s) {unknown}; known fields are {sorted(known)}")
        values = dict(values)
        if "edges" in values:
            values["edges"] = tuple(tuple(edge) for edge in values["edges"])
        missing = sorted(f.name for f in fields(cls) if f.name not in values and f.default is MISSING)
        if missing:
            raise ValueError(f"VPNConfig is missing required field(s) {missing}")
        config = cls(**values)
        config.validate()
        return config


def is_positive_number(value: Any) -> bool:
    """A finite int or float (not a bool) above 0."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"VPNConfig.{name} must be one of {choices}, got {value!r}")
