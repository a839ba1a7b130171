"""ResAU-Net for planning CT: network, losses, augmentation, preprocessing and training.

Modules (import the one you need; each imports torch lazily or at its own import time):

* :mod:`.network` — the ResAU-Net (ResNet34 encoder, attention-gated U-Net decoder).
* :mod:`.attention` — the skip-connection attention blocks.
* :mod:`.losses` — Lovász-softmax (default), CE, symmetric CE, soft Dice.
* :mod:`.augment` — flip, rotation, intensity, three-point affine + elastic deformation.
* :mod:`.preprocess` — HU window, body crop to 256x256, in-plane resampling, exact inverse.
* :mod:`.dataset` — training cases on disk → cached 2D slices.
* :mod:`.training` — the training loop (checkpoints, early stopping, grid search).

This package module itself imports nothing heavy so that ``import CervixAutoSegLib.ct``
stays instant.
"""
