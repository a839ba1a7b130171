"""The MR family's registry entry: two-stage PocketNet on T2-weighted MRI (organ, then tumour).

The structures and their label values are fixed (1 organ = uterus + cervix + vagina with the
tumour included, 2 tumour painted over the organ), so MR label maps and RTSTRUCTs can be
read, written and evaluated; the network runner is not part of this version yet, so no MR
model can run (``segment`` says so in one line).
"""

from __future__ import annotations

from ..families import ModelFamily
from ..structures import (ANATOMICAL_STRUCTURE, CERVIX_UTERI, GROSS_TUMOR_VOLUME, GTV, MORPHOLOGICALLY_ALTERED,
                          ORGAN, UTERUS, Structure)

MR_STRUCTURES: tuple[Structure, ...] = (
    Structure(1, "Uterus_Cx_Vagina", "Organ (uterus, cervix, vagina)", (60, 120, 255), ORGAN,
              ANATOMICAL_STRUCTURE, UTERUS),
    Structure(2, "GTVp", "Tumor", (255, 230, 0), GTV, MORPHOLOGICALLY_ALTERED,
              GROSS_TUMOR_VOLUME, CERVIX_UTERI),
)

MR_FAMILY = ModelFamily(
    name="mr",
    modality="MR",
    title="PocketNet, organ then tumour (T2w MRI)",
    structures=MR_STRUCTURES,
    runner=None,
)
