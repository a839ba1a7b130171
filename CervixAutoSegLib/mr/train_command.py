"""``cervixautoseg train mr``: one PocketNet stage on T2w MR cases (or MR phantoms) → a model directory.

The two stages train separately into the same model directory; each export keeps the other
stage's network already there, so the directory holds ``organ`` and ``tumor`` once both ran::

    cervixautoseg train mr --stage organ --phantom-seeds 2000-2039 --out MODEL --work runs/mr-organ
    cervixautoseg train mr --stage tumor --phantom-seeds 2000-2039 --out MODEL --work runs/mr-tumor

The options shared by every family come from :mod:`CervixAutoSegLib.commands.train`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_MODEL_ID = "mr-pocketnet"
MAX_WORKING_SPACING_MM = 20.0
"""A coarser working grid would leave a cervical tumour a handful of voxels."""


class PocketNetTrainer:
    """:class:`~CervixAutoSegLib.families.FamilyTrainer` of the MR family."""

    help = "train one stage of the MR (two-stage PocketNet) model on T2w image + label pairs or MR phantoms"
    default_model_id = DEFAULT_MODEL_ID
    architecture_note = (
        "PocketNet as its reference code builds it (MIST nnunet --pocket), not as the paper's Fig. 2 text "
        "describes it (4 levels, batch norm, ReLU, dense links): 32 feature maps on every level, kernels and "
        "strides by nnU-Net's planning rule (6 levels; (3,3,1) x3 then (3,3,3)), conv-InstanceNorm(affine)-"
        "LeakyReLU(0.01) residual blocks, transposed-conv up-sampling with bias, two deep-supervision heads "
        "in training only; stage 'organ' takes the T2w image, stage 'tumor' the image and the organ mask")

    def config_type(self):
        from .config import MRTrainConfig

        return MRTrainConfig

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from .config import STAGES, MRTrainConfig

        defaults = MRTrainConfig()
        group = parser.add_argument_group("PocketNet")
        group.add_argument("--stage", choices=STAGES, default=defaults.stage,
                           help="organ (stage 1) or tumor (stage 2, organ mask as second input)")
        group.add_argument("--patch-size", type=int, nargs=3, default=list(defaults.patch_size_xyz),
                           metavar=("X", "Y", "Z"), help="training patch in voxels, (x, y, z) (default %(default)s)")
        group.add_argument("--spacing", type=float, nargs=3, default=list(defaults.spacing_xyz),
                           metavar=("X", "Y", "Z"), help="working grid in mm, (x, y, z) (default %(default)s)")
        group.add_argument("--plain-blocks", action="store_true", help="basic conv blocks instead of residual ones")
        group.add_argument("--foreground-fraction", type=float, default=defaults.foreground_fraction)
        group.add_argument("--no-augment", action="store_true")
        group.add_argument("--batch-dice", action="store_true",
                           help="one Dice over the pooled batch instead of per patch (the 0.1/0.2 weights' loss)")
        group.add_argument("--max-val-cases", type=int, default=defaults.max_val_cases,
                           help="validation cases scored per epoch (default %(default)s)")
        parser.set_defaults(lr=defaults.learning_rate, batch_size=defaults.batch_size, max_epochs=defaults.max_epochs,
                            steps_per_epoch=defaults.steps_per_epoch, patience=defaults.patience,
                            lr_schedule=defaults.lr_schedule, weight_decay=defaults.weight_decay)

    def config(self, args: argparse.Namespace, loop: dict):
        from ..errors import InputError
        from .config import MRTrainConfig

        if args.max_val_cases < 1:
            raise InputError(f"--max-val-cases must be at least 1, got {args.max_val_cases}")
        if not 0.0 <= args.foreground_fraction <= 1.0:
            raise InputError(f"--foreground-fraction must be between 0 and 1, got {args.foreground_fraction}")
        from .network import plan_unet

        if not all(0.0 < s < MAX_WORKING_SPACING_MM for s in args.spacing):
            raise InputError(f"--spacing must be 3 positive millimetre values below {MAX_WORKING_SPACING_MM}, "
                             f"got {tuple(args.spacing)}")
        divisor = plan_unet(MRTrainConfig().network_patch_xyz, args.spacing).size_divisor_xyz
        if any(p % d for p, d in zip(args.patch_size, divisor)):
            raise InputError(f"--patch-size must be multiples of {divisor} (x, y, z), got {tuple(args.patch_size)}")
        return MRTrainConfig(**loop, stage=args.stage, patch_size_xyz=tuple(args.patch_size),
                             spacing_xyz=tuple(args.spacing),
                             residual=not args.plain_blocks, foreground_fraction=args.foreground_fraction,
                             augment=not args.no_augment, per_patch_dice=not args.batch_dice,
                             max_val_cases=args.max_val_cases)

    def task(self, config, train_sources, val_sources, work: Path):
        from .preprocess import MRPreprocessing
        from .training import PocketNetTask, prepare_case

        params, cache = MRPreprocessing(spacing_mm=tuple(config.spacing_xyz)), work / "cache"
        return PocketNetTask(config.stage, [prepare_case(s, params, cache) for s in train_sources],
                             [prepare_case(s, params, cache) for s in val_sources])

    def preprocessing(self, config) -> dict:
        from .preprocess import MRPreprocessing

        return MRPreprocessing(spacing_mm=tuple(config.spacing_xyz)).to_dict()

    def export(self, best: dict, config, preprocessing: dict, earlier):
        """This stage's network from ``best.pt``, plus the other stage's from ``earlier`` if it has one."""
        from ..models import NetworkSpec, load_network
        from .network import ARCHITECTURE, build_pocketnet
        from .training import pocketnet_kwargs

        kwargs = pocketnet_kwargs(config)
        network = build_pocketnet(**kwargs)
        network.load_state_dict(best["model"])
        networks = {config.stage: NetworkSpec(network.eval(), ARCHITECTURE, kwargs)}
        for entry in earlier.networks if earlier is not None else ():
            if entry.role != config.stage:
                networks[entry.role] = NetworkSpec(load_network(earlier, entry.role), entry.architecture,
                                                   entry.architecture_kwargs)
        ordered = {role: networks[role] for role in ("organ", "tumor") if role in networks}
        return ordered, f"validation cases, {config.stage} stage alone, sliding window on the working grid"
