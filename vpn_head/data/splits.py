"""Honest model selection: a validation set carved from the training split by subject.

NTU-60/120 and N-UCLA have no official validation split. Choosing the checkpoint on the test split (what the head
trainer did before) reports the best of 30 test scores, which is optimistic. Instead, for a protocol without
``val`` rows, ``carve_validation`` holds out a deterministic set of *subjects* of the training split: every clip of
a held-out subject is validation, every other training clip is used to fit, so no person is in both. Checkpoints
are chosen on that set and the test split is scored once, at the end. Smarthome keeps its official validation
split.

The subject of a clip comes from its sample id, through the dataset's own id parser
(``DatasetSpec.parse_sample_id``, the same one the manifest uses): NTU ``P###``, Smarthome ``_pNN_``, N-UCLA ``_sNN_``.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.datasets.registry import get_dataset

CARVED_VAL = "val_carved"
"""Split name reported for a validation set carved from the training split."""


def sample_subject(dataset: str, sample_id: str) -> int:
    """The performer of ``sample_id`` in ``dataset``.

    Raises:
        ValueError: an unknown dataset, or an id the dataset's parser does not accept.
    """
    return get_dataset(dataset).parse_sample_id(sample_id).subject


def held_out_subjects(subjects: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Choose ``round(fraction * #subjects)`` subjects (at least 1, and at least one left to train on).

    The choice depends only on the set of subjects, ``fraction`` and ``seed``, not on row order.

    Args:
        subjects: (N,) subject of every training clip.
        fraction: share of the training subjects to hold out, in (0, 1).
        seed: selects which subjects.

    Returns:
        Sorted (K,) held-out subject ids.

    Raises:
        ValueError: fewer than two distinct subjects, or ``fraction`` outside (0, 1).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction!r}")
    unique = np.unique(subjects)
    if unique.size < 2:
        raise ValueError(f"cannot carve a validation set by subject from {unique.size} training subject(s)")
    k = min(max(1, int(math.floor(fraction * unique.size + 0.5))), unique.size - 1)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED_7A1]))
    return np.sort(rng.choice(unique, size=k, replace=False))


def carve_validation(dataset: str, sample_ids: np.ndarray, fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Split training clips into (fit, validation) masks by subject.

    Args:
        dataset: registry name (picks the sample-id parser).
        sample_ids: (N,) sample id of every training clip.
        fraction: share of subjects to hold out.
        seed: selects the held-out subjects.

    Returns:
        ``(is_validation, held_out)``: a (N,) bool mask and the sorted held-out subject ids.
    """
    subjects = np.array([sample_subject(dataset, str(s)) for s in sample_ids], dtype=np.int64)
    held_out = held_out_subjects(subjects, fraction, seed)
    return np.isin(subjects, held_out), held_out
