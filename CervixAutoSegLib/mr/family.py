"""The MR family's registry entry: two-stage PocketNet on T2-weighted MRI (organ, then tumour).

Label values: 1 organ (uterus + cervix + vagina, tumour included), 2 tumour painted over
the organ; in segments and RTSTRUCT the organ region includes the tumour.
"""

from __future__ import annotations

from ..families import ModelFamily
from ..inference_options import InferenceOptions
from ..structures import (ANATOMICAL_STRUCTURE, CERVIX_UTERI, GROSS_TUMOR_VOLUME, GTV, MORPHOLOGICALLY_ALTERED,
                          ORGAN, UTERUS, Structure)
from .benchmark_case import PhantomT2Axial
from .runner import PocketNetRunner
from .train_command import PocketNetTrainer

MR_STRUCTURES: tuple[Structure, ...] = (
    Structure(1, "Uterus_Cx_Vagina", "Organ (uterus, cervix, vagina)", (60, 120, 255), ORGAN,
              ANATOMICAL_STRUCTURE, UTERUS),
    Structure(2, "GTVp", "Tumor", (255, 230, 0), GTV, MORPHOLOGICALLY_ALTERED,
              GROSS_TUMOR_VOLUME, CERVIX_UTERI),
)


def build_pocketnet(**kwargs):
    """The PocketNet of a model card's ``architecture_kwargs`` (imports torch and MONAI).

    Built on the CPU even inside :func:`~CervixAutoSegLib.models.load_network`'s meta-device
    block: DynUNet draws its weights with ``kaiming_normal_``, whose meta-tensor form runs
    through torch's Python references, and their first use imports ``torch._dynamo`` (1.1 s of
    a 13 s case); the real draw of PocketNet's 0.55 M weights takes 15 ms.
    """
    import torch

    from .network import build_pocketnet as build

    with torch.device("cpu"):
        return build(**kwargs)


MR_FAMILY = ModelFamily(
    name="mr",
    modality="MR",
    title="PocketNet, organ then tumour (T2w MRI)",
    structures=MR_STRUCTURES,
    runner=PocketNetRunner(),
    architectures={"PocketNet": build_pocketnet},
    inference_defaults=InferenceOptions(flip_tta=True, overlap=0.5),
    trainer=PocketNetTrainer(),
    benchmark=PhantomT2Axial(),
)
