"""Model directories: weights + model card, registry, checksum and loading.

A model directory ``Resources/Models/<model_id>/`` holds

* ``model.json`` — the model card (:class:`ModelCard`): id, family (``"ct"``/``"mr"``),
  architecture and its keyword arguments, the structures it draws (labels.json format:
  values, TG-263 names, colours, terminology), preprocessing (window/normalisation, crop,
  expected spacing...), the weights file name and its sha256, a training-data summary,
  measured validation metrics and the intended use;
* the weights (``weights.pt``): a float16 ``state_dict`` saved with ``torch.save``.

A clinic's own retrained model is just another directory in the same format; the
module and the command line load it without code changes.  Loading verifies the
sha256, so a corrupt or swapped weights file is refused with a one-line
:class:`~CervixAutoSegLib.errors.ModelError` instead of producing silently wrong contours.

torch is imported only by the functions that need it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from .atomic import write_bytes_atomic, write_text_atomic
from .errors import ModelError
from .structures import Structure, labels_document, structures_for, structures_from_json

CARD_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"
CARD_FORMAT_VERSION = 1
RESOURCES_ENV = "CERVIXAUTOSEG_RESOURCES"
FAMILIES = ("ct", "mr")
NOT_FOR_CLINICAL_USE = (
    "Research and demonstration only. Trained on synthetic pelvis phantoms: NOT FOR CLINICAL USE."
)
_HASH_CHUNK = 1 << 20

ARCHITECTURES: dict[str, str] = {
    "ResAUNet": "CervixAutoSegLib.ct.network:build_network",
}
"""Architecture name → ``"module:function"`` building it from ``architecture_kwargs``.

Other network families add themselves with :func:`register_architecture`; the card
stores only the name, so cards stay valid when code moves.
"""


def register_architecture(name: str, builder: str) -> None:
    """Make ``name`` loadable; ``builder`` is ``"package.module:function"``."""
    ARCHITECTURES[name] = builder


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """The parsed ``model.json`` of a model directory (``path``)."""

    id: str
    family: str
    version: str
    architecture: str
    architecture_kwargs: dict
    structures: tuple[Structure, ...]
    preprocessing: dict
    weights_file: str
    sha256: str
    training: dict
    validation: dict
    intended_use: str
    path: Path

    @property
    def weights_path(self) -> Path:
        return self.path / self.weights_file

    def labels(self) -> dict:
        """labels.json document of this model."""
        return labels_document(self.id, self.structures)

    def to_json(self) -> dict:
        """The ``model.json`` document (``path`` is where it lives, not part of it)."""
        return {
            "format_version": CARD_FORMAT_VERSION,
            "id": self.id,
            "family": self.family,
            "version": self.version,
            "architecture": self.architecture,
            "architecture_kwargs": self.architecture_kwargs,
            "labels": self.labels()["labels"],
            "preprocessing": self.preprocessing,
            "weights_file": self.weights_file,
            "weights_dtype": "float16",
            "sha256": self.sha256,
            "training": self.training,
            "validation": self.validation,
            "intended_use": self.intended_use,
        }


# ---------------------------------------------------------------- locations
def resources_dir() -> Path:
    """``$CERVIXAUTOSEG_RESOURCES`` if set, else the repository's ``Resources/``."""
    override = os.environ.get(RESOURCES_ENV)
    return Path(override) if override else Path(__file__).resolve().parents[1] / "Resources"


def models_dir() -> Path:
    return resources_dir() / "Models"


# ------------------------------------------------------------------ reading
def read_card(model_dir: str | Path) -> ModelCard:
    """Parse ``model_dir/model.json``; ModelError when missing or malformed."""
    model_dir = Path(model_dir)
    card_path = model_dir / CARD_FILE
    try:
        document = json.loads(card_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{model_dir} is not a model directory (no {CARD_FILE})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"model card {card_path} is unreadable: {error}") from None
    try:
        family = str(document["family"]).lower()
        if family not in FAMILIES:
            raise ValueError(f"family {family!r} is not one of {FAMILIES}")
        return ModelCard(
            id=str(document["id"]),
            family=family,
            version=str(document.get("version", "0")),
            architecture=str(document["architecture"]),
            architecture_kwargs=dict(document.get("architecture_kwargs", {})),
            structures=structures_from_json({"labels": document["labels"]}),
            preprocessing=dict(document.get("preprocessing", {})),
            weights_file=str(document.get("weights_file", WEIGHTS_FILE)),
            sha256=str(document["sha256"]).lower(),
            training=dict(document.get("training", {})),
            validation=dict(document.get("validation", {})),
            intended_use=str(document.get("intended_use", "")),
            path=model_dir,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ModelError(f"model card {card_path} is invalid: {error!s}") from None


def list_models(root: str | Path | None = None) -> list[ModelCard]:
    """Every ``root/*/model.json`` that parses (default root: :func:`models_dir`), by id."""
    root = Path(root) if root is not None else models_dir()
    cards = []
    for card_path in sorted(root.glob(f"*/{CARD_FILE}")):
        try:
            cards.append(read_card(card_path.parent))
        except ModelError:
            continue
    return cards


def _mean_validation_dsc(card: ModelCard) -> float:
    value = card.validation.get("mean_dsc")
    return float(value) if isinstance(value, (int, float)) else -1.0


def _version_key(version: str) -> tuple:
    """"1.10" > "1.9": numeric parts compare as numbers, others as text."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in version.split("."))


def find_model(family_or_id: str, root: str | Path | None = None) -> ModelCard:
    """A model by exact id, or the best model of a family (``"ct"``/``"mr"``).

    "Best" = highest ``validation.mean_dsc`` in its card, then the latest version.
    """
    cards = list_models(root)
    for card in cards:
        if card.id == family_or_id:
            return card
    family = family_or_id.lower()
    candidates = [card for card in cards if card.family == family]
    if not candidates:
        where = Path(root) if root is not None else models_dir()
        known = ", ".join(card.id for card in cards) or "none"
        raise ModelError(f"no model {family_or_id!r} in {where} (installed: {known})")
    return max(candidates, key=lambda card: (_mean_validation_dsc(card), _version_key(card.version), card.id))


# ------------------------------------------------------------------ writing
def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def half_state_dict(network) -> dict:
    """The network's state_dict with floating tensors as float16 (integers unchanged)."""
    return {
        name: (tensor.detach().to("cpu").half() if tensor.is_floating_point() else tensor.detach().to("cpu"))
        for name, tensor in network.state_dict().items()
    }


def write_model_dir(
    out_dir: str | Path,
    network,
    *,
    model_id: str,
    family: str,
    architecture: str,
    architecture_kwargs: Mapping[str, Any] | None = None,
    version: str = "1",
    structures: tuple[Structure, ...] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    validation: Mapping[str, Any] | None = None,
    intended_use: str = NOT_FOR_CLINICAL_USE,
) -> ModelCard:
    """Save ``network`` as a model directory (fp16 weights + card with their sha256).

    The directory is assembled next to ``out_dir`` and swapped in whole, so a reader
    sees the old model or the new one, never new weights with an old card.
    """
    import torch

    out_dir = Path(out_dir)
    family = family.lower()
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        buffer = io.BytesIO()
        torch.save(half_state_dict(network), buffer)
        write_bytes_atomic(staging / WEIGHTS_FILE, buffer.getvalue())
        card = ModelCard(
            id=model_id,
            family=family,
            version=str(version),
            architecture=architecture,
            architecture_kwargs=dict(architecture_kwargs or {}),
            structures=tuple(structures) if structures is not None else structures_for(family),
            preprocessing=dict(preprocessing or {}),
            weights_file=WEIGHTS_FILE,
            sha256=file_sha256(staging / WEIGHTS_FILE),
            training=dict(training or {}),
            validation=dict(validation or {}),
            intended_use=intended_use,
            path=out_dir,
        )
        write_text_atomic(staging / CARD_FILE, json.dumps(card.to_json(), indent=2) + "\n")
        # mkdtemp/mkstemp create owner-only entries; a model directory is shared read-only data.
        staging.chmod(0o755)
        for path in staging.iterdir():
            path.chmod(0o644)
        _swap_directory(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return card


def _swap_directory(new: Path, target: Path) -> None:
    """Replace directory ``target`` by ``new`` with two renames."""
    if not target.exists():
        os.replace(new, target)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    retired.rmdir()
    os.replace(target, retired)
    try:
        os.replace(new, target)
    except OSError:
        os.replace(retired, target)
        raise
    shutil.rmtree(retired, ignore_errors=True)


# ------------------------------------------------------------------ loading
def verify_weights(card: ModelCard) -> None:
    """ModelError unless the weights file exists and matches the card's sha256."""
    if not card.weights_path.is_file():
        raise ModelError(f"weights of model {card.id} are missing ({card.weights_path})")
    if file_sha256(card.weights_path) != card.sha256:
        raise ModelError(
            f"weights of model {card.id} do not match the sha256 in its model card (file corrupt or replaced)"
        )


def _builder(architecture: str) -> Callable[..., Any]:
    try:
        module_name, function_name = ARCHITECTURES[architecture].split(":")
    except KeyError:
        raise ModelError(
            f"unknown network architecture {architecture!r} (known: {', '.join(sorted(ARCHITECTURES))})"
        ) from None
    return getattr(importlib.import_module(module_name), function_name)


def load_network(card: ModelCard, device: str = "cpu"):
    """Verified weights → ``torch.nn.Module`` in eval mode, float32, on ``device``."""
    import torch

    verify_weights(card)
    network = _builder(card.architecture)(card.architecture, **card.architecture_kwargs)
    try:
        state = torch.load(card.weights_path, map_location="cpu", weights_only=True)
        state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
        network.load_state_dict(state, strict=True)
    except Exception as error:  # torch raises many types for unreadable / mismatched files
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"weights of model {card.id} cannot be loaded: {first_line}") from None
    return network.to(device).eval()
