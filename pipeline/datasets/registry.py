"""The dataset registry: every ``DatasetSpec`` the pipeline knows, by name.

Each dataset lives in one module that holds its facts as data (class lists, joint names, skeleton edge lists,
protocols; every number from ``shared/DATASETS.md``) and its behaviour as functions (skeleton reader, sample-id
parser with the protocol splits, manifest scanner), and builds its ``DatasetSpec``: ``pipeline/datasets/ntu.py`` (NTU-60 and
NTU-120), ``pipeline/datasets/smarthome.py``, ``pipeline/datasets/nucla.py``. Code elsewhere looks a dataset up here and calls what
its spec carries; nothing branches on a dataset's name.

Adding a fifth dataset touches one new module (its facts, reader, parser, scanner and ``DatasetSpec``, built like
``pipeline/datasets/nucla.py``) and the ``DATASETS`` line below; ``register`` does the same at run time.
``tests/pipeline/datasets/test_registry.py::test_a_fifth_dataset_needs_only_its_module_and_the_registry`` shows it: a toy dataset
defined in the test goes through the manifest scan, validation, pose loading and the validation carve.
"""

from __future__ import annotations

from pipeline.datasets import ntu, nucla, smarthome
from pipeline.datasets.spec import DatasetSpec

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (*ntu.SPECS, smarthome.SPEC, nucla.SPEC)}


def register(spec: DatasetSpec) -> None:
    """Add a dataset to the registry.

    Raises:
        ValueError: a dataset of that name is already registered.
    """
    if spec.name in DATASETS:
        raise ValueError(f"dataset {spec.name!r} is already registered")
    DATASETS[spec.name] = spec


def get_dataset(name: str) -> DatasetSpec:
    """Look up a dataset by registry name, with a clear error for an unknown one."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name]


def protocol_label(spec: DatasetSpec, protocol: str, action: str) -> int:
    """0-based label of ``action`` in ``protocol``'s class list, or -1 when the protocol excludes it."""
    classes = spec.protocol_classes(protocol)
    return classes.index(action) if action in classes else -1
