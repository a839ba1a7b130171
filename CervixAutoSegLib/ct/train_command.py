"""``cervixautoseg train ct``: ResAU-Net on image + label pairs (or phantoms) → a model directory.

Examples::

    cervixautoseg train ct --data CASES/ --out Resources/Models/my-ct-model
    cervixautoseg train ct --phantom-seeds 1000-1099 --out MODEL --work runs/ct --resume
    cervixautoseg train ct --grid-search --lrs 1e-3 3e-4 --batch-sizes 4 8 --data CASES/ --out MODEL
    cervixautoseg train ct --export-only --work runs/ct --out MODEL --eval-phantom-seeds 5000-5009

``--work`` keeps checkpoints (``checkpoint.pt`` every few minutes and each epoch, ``best.pt``),
the per-epoch log (``log.jsonl``) and the slice cache; re-running with ``--resume``
continues where the last run stopped.  The options shared by every family (data, split,
output, resume, the loop's hyper-parameters) come from :mod:`CervixAutoSegLib.commands.train`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "ct-resaunet"


class CTTrainer:
    """:class:`~CervixAutoSegLib.families.FamilyTrainer` of the CT family."""

    help = "train a CT (ResAU-Net) model on image + label pairs or synthetic phantoms"
    default_model_id = DEFAULT_MODEL_ID
    architecture_note = ("ResAU-Net as the paper's Fig. 3 draws it: ResNet34 encoder, attention-gated U-Net decoder "
                         "(channel attention, eqs. 1-5 by default), 2D on one CT slice; the loss is in the config")

    def config_type(self):
        from .config import TrainConfig

        return TrainConfig

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from .config import ATTENTION_KINDS, LOSS_NAMES, TrainConfig

        defaults = TrainConfig()
        hyper = parser.add_argument_group("ResAU-Net")
        hyper.add_argument("--loss", default=defaults.loss, choices=LOSS_NAMES)
        hyper.add_argument("--patch-size", type=int, default=defaults.patch_size, help="multiple of 32")
        hyper.add_argument("--attention", default=defaults.attention, choices=ATTENTION_KINDS)
        hyper.add_argument("--no-augment", action="store_true")
        hyper.add_argument("--max-val-slices", type=int, default=defaults.max_val_slices,
                           help="validate on at most N evenly spaced slices per case (0 = all)")
        hyper.add_argument("--hd95-cases", type=int, default=defaults.hd95_cases,
                           help="validation cases whose HD95 is logged each epoch (default %(default)s)")
        hyper.add_argument("--structure-weights", metavar="NAME=W,...",
                           help="odds of centring foreground patches on each structure, e.g. CTVn=3 "
                                "(others 1; default: equal)")
        hyper.add_argument("--end-fraction", type=float, default=defaults.end_fraction,
                           help="share of patches from slices just beyond a structure's cranial or caudal end, "
                                "where a 2D network cannot see it stop (default %(default)s)")
        hyper.add_argument("--end-margin-mm", type=float, default=defaults.end_margin_mm,
                           help="how far beyond the end those slices reach (default %(default)s mm)")

    def config(self, args: argparse.Namespace, loop: dict):
        """The TrainConfig of ``args``; ``loop`` holds the shared loop's fields already parsed."""
        from ..commands.train import parse_structure_weights
        from ..errors import InputError
        from .config import TrainConfig
        from .family import CT_STRUCTURES

        if args.patch_size % 32:
            raise InputError(f"--patch-size must be a multiple of 32, got {args.patch_size}")
        if not 0.0 <= args.end_fraction <= 1.0:
            raise InputError(f"--end-fraction must be between 0 and 1, got {args.end_fraction}")
        return TrainConfig(
            **loop, loss=args.loss, patch_size=args.patch_size, attention=args.attention,
            augment=not args.no_augment, max_val_slices=args.max_val_slices, hd95_cases=args.hd95_cases,
            structure_weights=parse_structure_weights(args.structure_weights, CT_STRUCTURES),
            end_fraction=args.end_fraction, end_margin_mm=args.end_margin_mm,
        )

    def task(self, config, train_sources, val_sources, work: Path):
        """The training task on the prepared (cached) slices of the sources."""
        from .preprocess import CTPreprocessing
        from .training import CACHE_DIR, CTTrainingTask, load_slice_cases

        params = CTPreprocessing()
        cache = work / CACHE_DIR
        return CTTrainingTask(load_slice_cases(train_sources, params, cache),
                              load_slice_cases(val_sources, params, cache))

    def preprocessing(self, config) -> dict:
        from .preprocess import CTPreprocessing

        return CTPreprocessing().to_dict()

    def export(self, best: dict, config, preprocessing: dict, earlier):
        """(networks to save, model-card validation note) from ``best.pt``'s state."""
        from ..models import NetworkSpec
        from .network import ARCHITECTURE
        from .training import CLASSES, build_ct_network

        network = build_ct_network(config)
        network.load_state_dict(best["model"])
        kwargs = {"in_channels": 1, "classes": CLASSES, "attention": config.attention}
        return {"network": NetworkSpec(network.eval(), ARCHITECTURE, kwargs)}, \
            "validation (cropped 256x256 slices, per-case 3D DSC, no post-processing)"
