"""ResAU-Net for planning CT: network, losses, augmentation, preprocessing and training.

Modules (import the one you need; each imports torch lazily or at its own import time):

* :mod:`.network` — the ResAU-Net (ResNet34 encoder, attention-gated U-Net decoder).
* :mod:`.attention` — the skip-connection attention blocks.
* :mod:`.losses` — Lovász-softmax (default), CE, symmetric CE, soft Dice.
* :mod:`.augment` — flip, rotation, intensity, three-point affine + elastic deformation.
* :mod:`.preprocess` — HU window, body crop to 256x256, in-plane resampling, exact inverse.
* :mod:`.dataset` — training cases on disk → cached 2D slices.
* :mod:`.config` — training hyper-parameters and option names (no torch needed).
* :mod:`.training` — the training loop (checkpoints, early stopping, grid search).

Typical inference use (what ``segment`` builds on)::

    from CervixAutoSegLib.models import find_model, load_network
    from CervixAutoSegLib.ct.preprocess import preprocess_ct, restore_labels
    card = find_model("ct")
    network = load_network(card)
    batch, context = preprocess_ct(volume, card.preprocessing)   # (n, 1, 256, 256) float32
    labels = restore_labels(argmax_of_network(batch), context)   # (z, y, x) uint8, input grid

This package module itself imports nothing heavy so that ``import CervixAutoSegLib.ct``
stays instant.
"""
