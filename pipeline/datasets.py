"""Dataset facts as data: class lists, joint names, skeleton edge lists, protocols and pose lengths.

Every number here comes from ``shared/DATASETS.md`` (verified facts). Code elsewhere looks things up here
instead of hard-coding them, so a skeleton graph is data (MS-G3D style), not code.
"""

from __future__ import annotations

from dataclasses import dataclass

NTU_CLASSES: tuple[str, ...] = (
    "drink water", "eat meal/snack", "brushing teeth", "brushing hair", "drop", "pickup", "throw",
    "sitting down", "standing up (from sitting position)", "clapping", "reading", "writing",
    "tear up paper", "wear jacket", "take off jacket", "wear a shoe", "take off a shoe",
    "wear on glasses", "take off glasses", "put on a hat/cap", "take off a hat/cap", "cheer up",
    "hand waving", "kicking something", "reach into pocket", "hopping (one foot jumping)", "jump up",
    "make a phone call/answer phone", "playing with phone/tablet", "typing on a keyboard",
    "pointing to something with finger", "taking a selfie", "check time (from watch)",
    "rub two hands together", "nod head/bow", "shake head", "wipe face", "salute",
    "put the palms together", "cross hands in front (say stop)", "sneeze/cough", "staggering",
    "falling", "touch head (headache)", "touch chest (stomachache/heart pain)", "touch back (backache)",
    "touch neck (neckache)", "nausea or vomiting condition", "use a fan (with hand or paper)/feeling warm",
    "punching/slapping other person", "kicking other person", "pushing other person",
    "pat on back of other person", "point finger at the other person", "hugging other person",
    "giving something to other person", "touch other person's pocket", "handshaking",
    "walking towards each other", "walking apart from each other",
    "put on headphone", "take off headphone", "shoot at the basket", "bounce ball", "tennis bat swing",
    "juggling table tennis balls", "hush (quite)", "flick hair", "thumb up", "thumb down",
    "make ok sign", "make victory sign", "staple book", "counting money", "cutting nails",
    "cutting paper (using scissors)", "snapping fingers", "open bottle", "sniff (smell)", "squat down",
    "toss a coin", "fold paper", "ball up paper", "play magic cube", "apply cream on face",
    "apply cream on hand back", "put on bag", "take off bag", "put something into a bag",
    "take something out of a bag", "open a box", "move heavy objects", "shake fist", "throw up cap/hat",
    "hands up (both hands)", "cross arms", "arm circles", "arm swings", "running on the spot",
    "butt kicks (kick backward)", "cross toe touch", "side kick", "yawn", "stretch oneself",
    "blow nose", "hit other person with something", "wield knife towards other person",
    "knock over other person (hit with body)", "grab other person\u2019s stuff", "shoot at other person with a gun",
    "step on foot", "high-five", "cheers and drink", "carry something with other person",
    "take a photo of other person", "follow other person", "whisper in other person\u2019s ear",
    "exchange things with other person", "support somebody with hand",
    "finger-guessing game (playing rock-paper-scissors)",
)

NTU_JOINTS: tuple[str, ...] = (
    "SpineBase", "SpineMid", "Neck", "Head", "ShoulderLeft", "ElbowLeft", "WristLeft", "HandLeft",
    "ShoulderRight", "ElbowRight", "WristRight", "HandRight", "HipLeft", "KneeLeft", "AnkleLeft", "FootLeft",
    "HipRight", "KneeRight", "AnkleRight", "FootRight", "SpineShoulder", "HandTipLeft", "ThumbLeft",
    "HandTipRight", "ThumbRight",
)
# 2s-AGCN NTU edges, 1-based as published (DATASETS.md 3.3).
_NTU_EDGES_1B = (
    (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10), (12, 11),
    (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19), (22, 23), (23, 8), (24, 25),
    (25, 12),
)

SMARTHOME_CLASSES: tuple[str, ...] = (
    "Cook.Cleandishes", "Cook.Cleanup", "Cook.Cut", "Cook.Stir", "Cook.Usestove", "Cutbread",
    "Drink.Frombottle", "Drink.Fromcan", "Drink.Fromcup", "Drink.Fromglass", "Eat.Attable", "Eat.Snack",
    "Enter", "Getup", "Laydown", "Leave", "Makecoffee.Pourgrains", "Makecoffee.Pourwater",
    "Maketea.Boilwater", "Maketea.Insertteabag", "Pour.Frombottle", "Pour.Fromcan", "Pour.Fromkettle",
    "Readbook", "Sitdown", "Takepills", "Uselaptop", "Usetelephone", "Usetablet", "Walk", "WatchTV",
)
"""31 cross-subject classes in the order of the official skeleton baseline (2s-AGCN-For-Daily-Living)."""

SMARTHOME_CV_CLASSES: tuple[str, ...] = (
    "Cutbread", "Drink.Frombottle", "Drink.Fromcan", "Drink.Fromcup", "Drink.Fromglass", "Eat.Attable",
    "Eat.Snack", "Enter", "Getup", "Leave", "Pour.Frombottle", "Pour.Fromcan", "Readbook", "Sitdown",
    "Takepills", "Uselaptop", "Usetablet", "Usetelephone", "Walk",
)
"""19 cross-view classes (alphabetical, as every official CV list orders them)."""

SMARTHOME_JOINTS: tuple[str, ...] = (
    "R_ankle", "L_ankle", "R_knee", "L_knee", "R_hip", "L_hip", "R_wrist", "L_wrist", "R_elbow", "L_elbow",
    "R_shoulder", "L_shoulder", "head",
)
# LCR-Net 13-joint bones, 0-based (TOQ-Nets list, DATASETS.md 1.5).
_SMARTHOME_EDGES_0B = (
    (0, 2), (2, 4), (1, 3), (3, 5), (6, 8), (8, 10), (7, 9), (9, 11), (4, 5), (4, 10), (5, 11), (10, 11),
    (11, 12), (10, 12),
)

NUCLA_ACTION_IDS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 9, 11, 12)
NUCLA_CLASSES: tuple[str, ...] = (
    "pick up with one hand", "pick up with two hands", "drop trash", "walk around", "sit down", "stand up",
    "donning", "doffing", "throw", "carry",
)
NUCLA_JOINTS: tuple[str, ...] = (
    "HipCenter", "Spine", "ShoulderCenter", "Head", "ShoulderLeft", "ElbowLeft", "WristLeft", "HandLeft",
    "ShoulderRight", "ElbowRight", "WristRight", "HandRight", "HipLeft", "KneeLeft", "AnkleLeft", "FootLeft",
    "HipRight", "KneeRight", "AnkleRight", "FootRight",
)
# CTR-GCN ucla.py inward edges, 1-based (DATASETS.md 2.4).
_NUCLA_EDGES_1B = (
    (1, 2), (2, 3), (4, 3), (5, 3), (6, 5), (7, 6), (8, 7), (9, 3), (10, 9), (11, 10), (12, 11), (13, 1),
    (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19),
)


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the pipeline needs to know about one dataset.

    Attributes:
        name: registry key (``ntu60``, ``ntu120``, ``smarthome``, ``nucla``).
        classes: the full class list; the manifest ``label`` column indexes it.
        protocols: protocol name -> its class list (labels are 0-based in that list).
        joints: joint names in file order.
        edges: 0-based undirected bones (the skeleton graph as data).
        centre_joint: index of the spine/pelvis joint poses are translated to.
        left_right: pairs of (left, right) joint indices, swapped by a horizontal flip.
        t_p: number of poses kept per clip (paper: 20/20/30/5).
        metric: headline metric, ``top1`` or ``mean_class`` (Smarthome).
    """

    name: str
    classes: tuple[str, ...]
    protocols: dict[str, tuple[str, ...]]
    joints: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]
    centre_joint: int
    left_right: tuple[tuple[int, int], ...]
    t_p: int
    metric: str

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    def protocol_classes(self, protocol: str) -> tuple[str, ...]:
        """Return the class list of ``protocol`` or raise a clear error."""
        if protocol not in self.protocols:
            raise ValueError(f"{self.name} has no protocol {protocol!r}; choose one of {sorted(self.protocols)}")
        return self.protocols[protocol]


def _zero_based(edges: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    return tuple((a - 1, b - 1) for a, b in edges)


def _left_right_pairs(joints: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """Pair joints whose names differ only by Left/Right (or L_/R_)."""
    pairs = []
    for i, name in enumerate(joints):
        for left, right in (("Left", "Right"), ("L_", "R_")):
            if left in name:
                j = joints.index(name.replace(left, right))
                pairs.append((i, j))
    return tuple(pairs)


_NTU_GRAPH = dict(joints=NTU_JOINTS, edges=_zero_based(_NTU_EDGES_1B), centre_joint=1,
                  left_right=_left_right_pairs(NTU_JOINTS))

DATASETS: dict[str, DatasetSpec] = {
    "ntu60": DatasetSpec("ntu60", NTU_CLASSES[:60], {"cs": NTU_CLASSES[:60], "cv": NTU_CLASSES[:60]},
                         t_p=20, metric="top1", **_NTU_GRAPH),
    "ntu120": DatasetSpec("ntu120", NTU_CLASSES, {"cs1": NTU_CLASSES, "cs2": NTU_CLASSES},
                          t_p=20, metric="top1", **_NTU_GRAPH),
    "smarthome": DatasetSpec(
        "smarthome", SMARTHOME_CLASSES,
        {"cs": SMARTHOME_CLASSES, "cv1": SMARTHOME_CV_CLASSES, "cv2": SMARTHOME_CV_CLASSES},
        joints=SMARTHOME_JOINTS, edges=_SMARTHOME_EDGES_0B, centre_joint=4,
        left_right=_left_right_pairs(SMARTHOME_JOINTS), t_p=30, metric="mean_class"),
    "nucla": DatasetSpec("nucla", NUCLA_CLASSES, {"v3_12": NUCLA_CLASSES},
                         joints=NUCLA_JOINTS, edges=_zero_based(_NUCLA_EDGES_1B), centre_joint=0,
                         left_right=_left_right_pairs(NUCLA_JOINTS), t_p=5, metric="top1"),
}


def get_dataset(name: str) -> DatasetSpec:
    """Look up a dataset by registry name, with a clear error for an unknown one."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name]


def protocol_label(spec: DatasetSpec, protocol: str, action: str) -> int:
    """0-based label of ``action`` in ``protocol``'s class list, or -1 when the protocol excludes it."""
    classes = spec.protocol_classes(protocol)
    return classes.index(action) if action in classes else -1
