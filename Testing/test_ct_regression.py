"""The CT pipeline draws the same labels as before the model-family refactor (pinned on a phantom, full flip TTA)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

PINNED = Path(__file__).parent / "Data" / "ct_phantom_seed3_labels_model_0.3.npz"
PINNED_SHA256 = "c834a1819f872075ebcd7c315773abea44be462a6dc6b1f82720d89994318f8b"
MAX_DIFFERING_VOXELS = 200
"""bf16 kernels, and so ties in the arg-max, differ between CPUs even of one instruction set: the pin
(an AMD EPYC without AMX) is matched exactly there, another AMD EPYC with AVX-512 BF16 differs in
1 voxel, an Intel CPU with AMX tiles in 54 of 28.3 M.  A change of the pipeline itself (geometry,
preprocessing, cleaning) moves thousands."""


@pytest.mark.slow
def test_ct_labels_on_a_fixed_phantom_are_unchanged():
    torch = pytest.importorskip("torch")
    from CervixAutoSegLib.models import find_model
    from CervixAutoSegLib.phantom import make_ct_phantom
    from CervixAutoSegLib.pipeline import segment

    card = find_model("ct")
    assert card.id == "ct-resaunet-phantom" and card.version == "0.3", "re-pin for a new bundled model"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        # Full flip TTA, as the pin was made (selective TTA, the default since, mirrors the uncertain
        # slices only; its accuracy is measured against full TTA in the QA notes, not pinned here).
        labels = segment(make_ct_phantom(3).image, None, model="ct", device="cpu",
                         options={"selective_tta": False}).labels.array
    finally:
        torch.set_num_threads(threads)
    with np.load(PINNED) as pinned:
        expected = pinned["labels"]
    assert hashlib.sha256(expected.tobytes()).hexdigest() == PINNED_SHA256
    assert labels.shape == expected.shape
    differing = int(np.count_nonzero(labels != expected))
    assert differing <= MAX_DIFFERING_VOXELS, f"{differing} voxels differ from the pinned labels"
    for value in range(1, 5):  # every structure keeps its volume
        assert abs(int(np.count_nonzero(labels == value)) - int(np.count_nonzero(expected == value))) <= differing
