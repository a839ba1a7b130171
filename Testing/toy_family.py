"""A third model family that exists only for the tests: one bright "Blob" on MR-like images.

Importing this module registers it (the plug-in way: ``CERVIXAUTOSEG_FAMILIES=toy_family``
makes the background worker process import it too).  It is written against the public
registry alone — a runner on the shared 3D sliding-window inferer, a builder, a trainer on
the shared loop — so that whatever works for it works without a line of family-specific
code in the pipeline, the commands, the MRML logic or the controller.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from CervixAutoSegLib.families import ModelFamily, NetworkOutput, families, register_family
from CervixAutoSegLib.inference_options import InferenceOptions
from CervixAutoSegLib.structures import ANATOMICAL_STRUCTURE, ORGAN, UTERUS, Structure
from CervixAutoSegLib.training import BatchSource, TrainingTask, mean_of, per_structure_dsc
from CervixAutoSegLib.training_config import LoopConfig

NAME = "toy"
ARCHITECTURE = "ToyNet3D"
ROI_ZYX = (8, 24, 24)
BLOB = Structure(1, "Blob", "Toy blob", (200, 80, 160), ORGAN, ANATOMICAL_STRUCTURE, UTERUS)
THRESHOLD = 1.0
"""Blob voxels lie above this z-score; the network starts as exactly this threshold classifier."""


def build_toynet(hidden: int = 2):
    """A 3D network (N, 1, z, y, x) → logits (N, 2, z, y, x): a 3x3x3 conv, then a 1x1x1 classifier
    initialised as ``x > THRESHOLD`` so even an untrained model finds the blob."""
    import torch
    from torch import nn

    network = nn.Sequential(nn.Conv3d(1, hidden, 3, padding=1), nn.Conv3d(hidden, 2, 1))
    with torch.no_grad():
        network[0].weight.zero_()
        network[0].weight[:, 0, 1, 1, 1] = 1.0  # identity at the kernel centre
        network[0].bias.zero_()
        network[1].weight.zero_()
        network[1].weight[0, :, 0, 0, 0] = -4.0 / hidden
        network[1].weight[1, :, 0, 0, 0] = 4.0 / hidden
        network[1].bias.copy_(torch.tensor([4.0 * THRESHOLD, -4.0 * THRESHOLD]))
    return network


def normalise(image: np.ndarray) -> np.ndarray:
    """z-score over the whole image, float32 (z, y, x)."""
    image = image.astype(np.float32)
    return (image - image.mean()) / max(float(image.std()), 1e-6)


class ToyRunner:
    def __call__(self, volume, card, device, options, progress, cancel) -> NetworkOutput:
        from CervixAutoSegLib.inferers import SlidingWindowInferer, prepare_network
        from CervixAutoSegLib.models import load_network

        started = time.perf_counter()
        network = prepare_network(load_network(card), device, options, spatial_dims=3)
        labels, info = SlidingWindowInferer(ROI_ZYX, options)(
            network, normalise(volume.array)[None], device=device, cancel=cancel,
            progress=lambda done, total: progress(done / total, f"windows {done}/{total}"))
        return NetworkOutput(labels=labels, field_of_view_border=None, inference=info.to_json(),
                             preprocessing={"normalisation": "z-score"},
                             timings={"network": time.perf_counter() - started})


@dataclasses.dataclass
class ToyConfig(LoopConfig):
    patch_zyx: tuple = ROI_ZYX


class _Patches(BatchSource):
    def __init__(self, cases, patch_zyx, rng):
        self.cases, self.patch_zyx, self.rng = cases, patch_zyx, rng

    def batch(self, size):
        import torch

        images, targets = [], []
        for _ in range(size):
            image, labels = self.cases[self.rng.integers(len(self.cases))]
            start = [int(self.rng.integers(0, max(n - p, 0) + 1)) for n, p in zip(image.shape, self.patch_zyx)]
            box = tuple(slice(s, s + p) for s, p in zip(start, self.patch_zyx))
            images.append(image[box][None])
            targets.append(labels[box])
        return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(targets))


class ToyTask(TrainingTask):
    """Random patches of whole cases; validation = CE loss and Blob DSC on every case."""

    family = NAME

    def __init__(self, train_sources, val_sources):
        self.train = [self._load(s) for s in train_sources]
        self.val = [self._load(s) for s in val_sources]

    @staticmethod
    def _load(source):
        volume, labels = source.load()
        return normalise(volume.array), labels.astype(np.int64)

    def build_network(self, config):
        return build_toynet()

    def batches(self, config, rng):
        return _Patches(self.train, config.patch_zyx, rng)

    def loss(self, config):
        import torch

        return lambda logits, targets: torch.nn.functional.cross_entropy(logits.float(), targets)

    def validate(self, network, config):
        import torch

        network.eval()
        losses, pairs = [], []
        with torch.no_grad():
            for image, labels in self.val:
                logits = network(torch.from_numpy(image)[None, None]).float()
                losses.append(float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels)[None])))
                pairs.append((logits.argmax(1)[0].numpy().astype(np.uint8), labels))
        dsc = per_structure_dsc(pairs, (BLOB,))
        return {"val_loss": float(np.mean(losses)), "dsc": dsc, "mean_dsc": mean_of(dsc)}


class ToyTrainer:
    help = "train the toy blob family"
    default_model_id = "toy-blob"
    architecture_note = "a two-layer 3D CNN (a test family, no paper)"

    def config_type(self):
        return ToyConfig

    def add_arguments(self, parser):
        parser.add_argument("--patch", type=int, nargs=3, default=list(ROI_ZYX), help="patch (z, y, x) voxels")

    def config(self, args, loop):
        return ToyConfig(**loop, patch_zyx=tuple(args.patch))

    def task(self, config, train_sources, val_sources, work: Path):
        return ToyTask(train_sources, val_sources)

    def preprocessing(self, config):
        return {"normalisation": "z-score"}

    def export(self, best, config, preprocessing, earlier):
        from CervixAutoSegLib.models import NetworkSpec

        network = build_toynet()
        network.load_state_dict(best["model"])
        return {"network": NetworkSpec(network.eval(), ARCHITECTURE, {"hidden": 2})}, "validation cases, whole images"


TOY_FAMILY = ModelFamily(
    name=NAME, modality="MR", title="Toy blob (tests only)", structures=(BLOB,), runner=ToyRunner(),
    architectures={ARCHITECTURE: build_toynet}, inference_defaults=InferenceOptions(flip_tta=True, overlap=0.5),
    trainer=ToyTrainer(),
)

if NAME not in {family.name for family in families()}:
    register_family(TOY_FAMILY)


def blob_case(seed: int, shape=(12, 40, 44)) -> tuple[np.ndarray, np.ndarray]:
    """(MR-like uint16 image, uint8 labels) (z, y, x): noise plus one bright ellipsoid = label 1."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    centre = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
    inside = (((zz - centre[0]) / 4.0) ** 2 + ((yy - centre[1]) / 9.0) ** 2 + ((xx - centre[2]) / 7.0) ** 2) < 1
    image = rng.normal(200, 20, shape) + 600 * inside
    return np.clip(image, 0, 4000).astype(np.uint16), inside.astype(np.uint8)
