"""The CT family's registry entry: ResAU-Net on planning CT (bladder, rectum, CTV-N, CTV-UV)."""

from __future__ import annotations

from ..families import ModelFamily
from ..inference_options import InferenceOptions
from ..structures import (ANATOMICAL_STRUCTURE, CERVIX_UTERI, CLINICAL_TARGET_VOLUME, CTV, MORPHOLOGICALLY_ALTERED,
                          ORGAN, PELVIC_LYMPH_NODE, RECTUM, URINARY_BLADDER, Structure)
from .benchmark_case import SyntheticPelvisCT
from .runner import ResAUNetRunner
from .train_command import CTTrainer

CT_STRUCTURES: tuple[Structure, ...] = (
    Structure(1, "Bladder", "Bladder", (248, 220, 96), ORGAN, ANATOMICAL_STRUCTURE, URINARY_BLADDER),
    Structure(2, "Rectum", "Rectum", (150, 90, 50), ORGAN, ANATOMICAL_STRUCTURE, RECTUM),
    Structure(3, "CTVn", "CTV-N", (0, 200, 255), CTV, MORPHOLOGICALLY_ALTERED,
              CLINICAL_TARGET_VOLUME, PELVIC_LYMPH_NODE),
    Structure(4, "CTVp", "CTV-UV", (255, 60, 60), CTV, MORPHOLOGICALLY_ALTERED,
              CLINICAL_TARGET_VOLUME, CERVIX_UTERI),
)
"""Label values 1-4 of the ResAU-Net paper's four structures, TG-263 names."""


def build_resaunet(**kwargs):
    """The ResAU-Net of a model card's ``architecture_kwargs`` (imports torch)."""
    from .network import ResAUNet

    return ResAUNet(**kwargs)


CT_FAMILY = ModelFamily(
    name="ct",
    modality="CT",
    title="ResAU-Net (planning CT)",
    structures=CT_STRUCTURES,
    runner=ResAUNetRunner(),
    architectures={"ResAUNet": build_resaunet},
    inference_defaults=InferenceOptions(flip_tta=True),
    trainer=CTTrainer(),
    benchmark=SyntheticPelvisCT(),
)
