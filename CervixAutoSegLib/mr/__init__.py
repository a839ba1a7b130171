"""PocketNet for T2-weighted MR (two stages: organ, then tumour inside the organ).

Modules (import the one you need; this package module itself imports nothing heavy):

* :mod:`.network` — PocketNet 3D as MIST ``nnunet --pocket`` builds it (MONAI DynUNet,
  32 feature maps at every level, nnU-Net kernel/stride planning); imports torch and monai.
* :mod:`.preprocess` — MIST preprocessing (reorient to ITK "RAI" = LPS layout, foreground
  crop, resample to 0.469 x 0.469 x 5 mm, percentile clip + z-score) and its exact inverse
  back onto the input grid; numpy/scipy only.
* :mod:`.family` — the family's registry entry (structures, runner).

Axis order used throughout: arrays are (z, y, x) numpy, the network sees (N, C, z, y, x);
spacings, patch sizes and geometry quoted "as in the paper" are (x, y, z).
"""
