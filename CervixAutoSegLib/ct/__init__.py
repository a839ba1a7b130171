"""The CT model family: ResAU-Net on planning CT (bladder, rectum, CTV-N, CTV-UV).

Only what is specific to this network and its preprocessing lives here; orientation,
cropping, the inferers, the training loop, case discovery and model cards are shared
(:mod:`CervixAutoSegLib.families` explains how a family plugs in).  Modules (import the one
you need; each imports torch lazily or at its own import time):

* :mod:`.family` — the registry entry: structures, runner, builder, trainer, benchmark case.
* :mod:`.runner` — the network stage of ``segment``: preprocess → :class:`~CervixAutoSegLib.inferers.SliceInferer` → input grid.
* :mod:`.network` — the ResAU-Net (ResNet34 encoder, attention-gated U-Net decoder).
* :mod:`.attention` — the skip-connection attention blocks.
* :mod:`.losses` — Lovász-softmax (default), CE, symmetric CE, soft Dice.
* :mod:`.augment` — flip, rotation, intensity, three-point affine + elastic deformation.
* :mod:`.preprocess` — HU window, body crop to 256x256, in-plane resampling, exact inverse.
* :mod:`.dataset` — cases → cached 2D slices, foreground-biased patch sampling.
* :mod:`.config` — training hyper-parameters and option names (no torch needed).
* :mod:`.training` — the training task the shared loop runs, and per-epoch validation.
* :mod:`.train_command` — the ``cervixautoseg train ct`` options.
* :mod:`.benchmark_case` — the synthetic CT of ``cervixautoseg benchmark ct``.

Typical inference use (what ``segment`` runs)::

    from CervixAutoSegLib.families import get_family
    from CervixAutoSegLib.models import find_model
    output = get_family("ct").runner(volume, find_model("ct"), torch.device("cpu"),
                                     get_family("ct").inference_defaults, progress, cancel)
    output.labels    # (z, y, x) uint8 on the input grid, before post-processing

This package module itself imports nothing heavy so that ``import CervixAutoSegLib.ct``
stays instant.
"""
