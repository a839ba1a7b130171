"""Model directories: weights + model card, lookup, checksum and loading.

A model directory ``Resources/Models/<model_id>/`` holds

* ``model.json`` — the model card (:class:`ModelCard`, format 2): id, family (a name in the
  family registry, :mod:`.families`), the networks it runs — each with a role
  (``"network"`` for a one-network model; ``"organ"`` and ``"tumor"`` for a two-stage one),
  architecture name and keyword arguments, weights file and its sha256 — the structures it
  draws (labels.json format: values, TG-263 names, colours, terminology), preprocessing,
  a training-data summary, measured validation metrics, QA thresholds and the intended use;
* the weights (``weights.pt``, or ``weights-<role>.pt``): float16 ``state_dict`` files
  saved with ``torch.save``.

Format-1 cards (one network: ``architecture``, ``architecture_kwargs``, ``weights_file``,
``sha256`` at the top level) still load, as a card with one ``"network"``.

A clinic's own retrained model is just another directory in the same format; the module
and the command line load it without code changes.  Loading verifies every sha256, so a
corrupt or swapped weights file is refused with a one-line
:class:`~CervixAutoSegLib.errors.ModelError` instead of producing silently wrong contours.

torch is imported only by the functions that need it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from .atomic import write_bytes_atomic, write_text_atomic
from .errors import InputError, ModelError
from .structures import Structure, labels_document, structures_from_json

CARD_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"
CARD_FORMAT_VERSION = 2
SINGLE_ROLE = "network"
"""Role of the only network of a one-network model."""
RESOURCES_ENV = "CERVIXAUTOSEG_RESOURCES"
NOT_FOR_CLINICAL_USE = (
    "Research and demonstration only. Trained on synthetic pelvis phantoms: NOT FOR CLINICAL USE."
)
_HASH_CHUNK = 1 << 20

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class NetworkEntry:
    """One network of a model card."""

    role: str
    architecture: str
    architecture_kwargs: dict
    weights_file: str
    sha256: str

    def to_json(self) -> dict:
        return {"role": self.role, "architecture": self.architecture,
                "architecture_kwargs": self.architecture_kwargs, "weights_file": self.weights_file,
                "weights_dtype": "float16", "sha256": self.sha256}


class NetworkSpec(NamedTuple):
    """A network to save: the module, its architecture name and the kwargs that rebuild it."""

    module: Any
    architecture: str
    architecture_kwargs: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """The parsed ``model.json`` of a model directory (``path``)."""

    id: str
    family: str
    version: str
    networks: tuple[NetworkEntry, ...]
    structures: tuple[Structure, ...]
    preprocessing: dict
    training: dict
    validation: dict
    intended_use: str
    path: Path
    qa: dict = dataclasses.field(default_factory=dict)
    """QA thresholds and plausibility ranges learned from the training data."""

    def network(self, role: str | None = None) -> NetworkEntry:
        """The network of ``role`` (None: the only one)."""
        if role is None and len(self.networks) == 1:
            return self.networks[0]
        for entry in self.networks:
            if entry.role == role:
                return entry
        raise ModelError(f"model {self.id} has no {role or 'single'} network "
                         f"(roles: {', '.join(n.role for n in self.networks)})")

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(entry.role for entry in self.networks)

    def weights_path(self, role: str | None = None) -> Path:
        return self.path / self.network(role).weights_file

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
            "networks": [entry.to_json() for entry in self.networks],
            "labels": self.labels()["labels"],
            "preprocessing": self.preprocessing,
            "training": self.training,
            "validation": self.validation,
            "qa": self.qa,
            "intended_use": self.intended_use,
        }


# ---------------------------------------------------------------- locations
INSTALLED_RESOURCES = Path("share") / "cervixautoseg" / "Resources"
"""Where ``pip install .`` puts ``Resources/`` (models, terminology), below ``sys.prefix``."""


def resources_dir() -> Path:
    """The folder holding ``Models/`` and the terminology file, first found of:

    1. ``$CERVIXAUTOSEG_RESOURCES``;
    2. ``Resources/`` beside the package (a repository checkout, an editable install, or the
       Slicer extension, which installs both side by side);
    3. ``<sys.prefix>/share/cervixautoseg/Resources`` (a regular ``pip install .``).

    When none exists, (2) is returned, so "no model directories in <path>" names it.
    """
    import sys

    override = os.environ.get(RESOURCES_ENV)
    if override:
        return Path(override)
    beside = Path(__file__).resolve().parents[1] / "Resources"
    installed = Path(sys.prefix) / INSTALLED_RESOURCES
    return installed if not beside.is_dir() and installed.is_dir() else beside


def models_dir() -> Path:
    return resources_dir() / "Models"


# ------------------------------------------------------------------ reading
def read_card(model_dir: str | Path) -> ModelCard:
    """Parse ``model_dir/model.json`` (format 1 or 2); ModelError when missing or malformed."""
    model_dir = Path(model_dir)
    card_path = model_dir / CARD_FILE
    try:
        document = json.loads(card_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{model_dir} is not a model directory (no {CARD_FILE})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"model card {card_path} is unreadable: {error}") from None
    if not isinstance(document, dict):
        raise ModelError(f"model card {card_path} is invalid: it holds a JSON {type(document).__name__}, "
                         "not an object") from None
    try:
        family = _registered_family(str(document["family"]))
        return ModelCard(
            id=str(document["id"]),
            family=family,
            version=str(document.get("version", "0")),
            networks=_networks_of(document),
            structures=structures_from_json({"labels": document["labels"]}),
            preprocessing=dict(document.get("preprocessing", {})),
            training=dict(document.get("training", {})),
            validation=dict(document.get("validation", {})),
            intended_use=str(document.get("intended_use", "")),
            path=model_dir,
            qa=dict(document.get("qa", {})),
        )
    except KeyError as error:  # str(KeyError) is only the quoted key
        raise ModelError(f"model card {card_path} is invalid: {error} is missing") from None
    except (TypeError, ValueError) as error:
        raise ModelError(f"model card {card_path} is invalid: {' '.join(str(error).split())}") from None


def _registered_family(name: str) -> str:
    from .families import get_family

    return get_family(name.lower()).name  # InputError (a ValueError) for an unknown family


def _networks_of(document: Mapping[str, Any]) -> tuple[NetworkEntry, ...]:
    """The card's networks; a format-1 card's top-level network becomes role ``"network"``."""
    entries = document.get("networks")
    if entries is None:
        entries = [{"role": SINGLE_ROLE, **{k: document[k] for k in ("architecture", "sha256")},
                    "architecture_kwargs": document.get("architecture_kwargs", {}),
                    "weights_file": document.get("weights_file", WEIGHTS_FILE)}]
    networks = tuple(
        NetworkEntry(role=str(entry.get("role", SINGLE_ROLE)), architecture=str(entry["architecture"]),
                     architecture_kwargs=dict(entry.get("architecture_kwargs", {})),
                     weights_file=str(entry.get("weights_file", WEIGHTS_FILE)), sha256=str(entry["sha256"]).lower())
        for entry in entries
    )
    roles = [entry.role for entry in networks]
    if not networks or len(set(roles)) != len(roles):
        raise ValueError(f"a card lists one or more networks with distinct roles, got {roles}")
    return networks


def list_models(root: str | Path | None = None) -> list[ModelCard]:
    """Every ``root/*/model.json`` that parses (default root: :func:`models_dir`), by id."""
    return scan_models(root)[0]


def scan_models(root: str | Path | None = None) -> tuple[list[ModelCard], list[ModelError]]:
    """(cards that parse, one :class:`ModelError` per ``root/*/model.json`` that does not).

    The errors name the broken card and why, so that "no model" messages can say which card
    was skipped instead of claiming the folder holds no model directories.
    """
    root = Path(root) if root is not None else models_dir()
    cards, broken = [], []
    for card_path in sorted(root.glob(f"*/{CARD_FILE}")):
        try:
            cards.append(read_card(card_path.parent))
        except ModelError as error:
            broken.append(error)
    return cards, broken


def _broken_note(broken: list[ModelError]) -> str:
    """``"; skipped N broken model card(s): <why>; <why>"``, or "" when every card parsed."""
    if not broken:
        return ""
    return f"; skipped {len(broken)} broken model card(s): " + "; ".join(str(error) for error in broken)


_warned_broken: set[str] = set()
"""Broken cards already warned about in this process (each is looked at several times per run)."""


def _warn_broken(broken: list[ModelError]) -> None:
    """Log each broken card once: a clinic's own model that fails to parse must not be replaced
    by another model without a word."""
    for error in broken:
        if str(error) not in _warned_broken:
            _warned_broken.add(str(error))
            log.warning("%s; that model is skipped", error)


def _mean_validation_dsc(card: ModelCard) -> float:
    value = card.validation.get("mean_dsc")
    return float(value) if isinstance(value, (int, float)) else -1.0


def _version_key(version: str) -> tuple:
    """"1.10" > "1.9": numeric parts compare as numbers, others as text."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in version.split("."))


def find_model(family_or_id: str, root: str | Path | None = None) -> ModelCard:
    """A model by exact id, or the best model of a registered family (e.g. ``"ct"``).

    "Best" = highest ``validation.mean_dsc`` in its card, then the latest version.
    """
    cards, broken = scan_models(root)
    for card in cards:
        if card.id == family_or_id:
            _warn_broken(broken)
            return card
    family = family_or_id.lower()
    candidates = [card for card in cards if card.family == family]
    if not candidates:
        where = Path(root) if root is not None else models_dir()
        known = ", ".join(card.id for card in cards) or "none"
        raise ModelError(f"no model {family_or_id!r} in {where} (installed: {known}){_broken_note(broken)}")
    _warn_broken(broken)
    return max(candidates, key=lambda card: (_mean_validation_dsc(card), _version_key(card.version), card.id))


def choose_model(modality: str, model: "str | ModelCard" = "auto", root: str | Path | None = None) -> ModelCard:
    """The model card for an image of ``modality``; InputError when none fits.

    ``model``: ``"auto"`` (the family registered for the modality), a family name (its best
    model), a model id, or a card already in hand (training evaluates the card it has just
    written this way).  A model of another modality is never used instead.
    """
    from .families import family_for_modality, family_names, get_family

    modality = (modality or "").upper()
    if isinstance(model, ModelCard):
        card = model
    elif (model or "auto").strip().lower() == "auto":
        family = family_for_modality(modality)
        if family is None:
            choices = " or ".join(f"--model {name}" for name in family_names())
            raise InputError(f"cannot tell which model family fits the image (modality {modality or 'unknown'!r}); "
                             f"use {choices}")
        try:
            card = find_model(family.name, root)
        except ModelError:
            raise InputError(_no_model_message(modality, root)) from None
    else:
        requested = model.strip()
        card = find_model(requested.lower() if requested.lower() in family_names() else requested, root)
    expected = get_family(card.family).modality
    if modality and modality != expected.upper():
        raise InputError(f"model {card.id} segments {expected} images but the input is {modality}; "
                         f"give a {expected} image or choose a {modality} model")
    return card


def _no_model_message(modality: str, root: str | Path | None) -> str:
    from .families import get_family

    where = Path(root) if root is not None else models_dir()
    cards, broken = scan_models(where)
    installed = sorted({get_family(card.family).modality for card in cards})
    article = "an" if modality[:1] in "AEFHILMNORSX" else "a"
    if not installed:
        if broken:  # the folder does hold models: say which card is broken, not "no model directories"
            return f"no {modality} model is usable in {where}{_broken_note(broken)}"
        return f"no {modality} model is installed (no model directories in {where})"
    others = " and ".join(installed)
    return (f"no {modality} model is installed; the {others} model cannot segment {modality} images "
            f"(install {article} {modality} model in {where} or give a {others} image){_broken_note(broken)}")


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
    network: Any,
    *,
    model_id: str,
    family: str,
    architecture: str | None = None,
    architecture_kwargs: Mapping[str, Any] | None = None,
    version: str = "1",
    structures: tuple[Structure, ...] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    validation: Mapping[str, Any] | None = None,
    qa: Mapping[str, Any] | None = None,
    intended_use: str = NOT_FOR_CLINICAL_USE,
) -> ModelCard:
    """Save a model directory: fp16 weights of every network + a card with their sha256.

    ``network`` is one ``torch.nn.Module`` (with ``architecture`` and ``architecture_kwargs``;
    role ``"network"``) or a mapping role → :class:`NetworkSpec` for a multi-network model.
    The directory is assembled next to ``out_dir`` and swapped in whole, so a reader sees
    the old model or the new one, never new weights with an old card.
    """
    from .families import get_family

    out_dir = Path(out_dir)
    family = get_family(family).name
    if not isinstance(network, Mapping):
        if architecture is None:
            raise ValueError("architecture is required for a single network")
        network = {SINGLE_ROLE: NetworkSpec(network, architecture, architecture_kwargs or {})}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        entries = tuple(_save_weights(staging, role, spec, single=len(network) == 1) for role, spec in network.items())
        card = ModelCard(
            id=model_id, family=family, version=str(version), networks=entries,
            structures=tuple(structures) if structures is not None else get_family(family).structures,
            preprocessing=dict(preprocessing or {}), training=dict(training or {}),
            validation=dict(validation or {}), intended_use=intended_use, path=out_dir, qa=dict(qa or {}),
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


def _save_weights(folder: Path, role: str, spec: NetworkSpec, single: bool) -> NetworkEntry:
    import torch

    name = WEIGHTS_FILE if single and role == SINGLE_ROLE else f"weights-{role}.pt"
    buffer = io.BytesIO()
    torch.save(half_state_dict(spec.module), buffer)
    write_bytes_atomic(folder / name, buffer.getvalue())
    return NetworkEntry(role, spec.architecture, dict(spec.architecture_kwargs), name, file_sha256(folder / name))


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
def verify_weights(card: ModelCard, role: str | None = None) -> None:
    """ModelError unless the weights of ``role`` (None: every network) exist and match their sha256."""
    for entry in card.networks if role is None else (card.network(role),):
        path = card.path / entry.weights_file
        if not path.is_file():
            raise ModelError(f"weights of model {card.id} are missing ({path})")
        if file_sha256(path) != entry.sha256:
            raise ModelError(f"weights of model {card.id} ({entry.weights_file}) do not match the sha256 in its "
                             "model card (file corrupt or replaced)")


def build_network(card: ModelCard, role: str | None = None):
    """The untrained network of ``role`` from the family's builder and the card's kwargs."""
    from .families import get_family

    entry = card.network(role)
    builders = get_family(card.family).architectures
    if entry.architecture not in builders:
        raise ModelError(f"model {card.id}: unknown network architecture {entry.architecture!r} for the "
                         f"{card.family} family (known: {', '.join(sorted(builders)) or 'none'})")
    try:
        return builders[entry.architecture](**entry.architecture_kwargs)
    except (TypeError, ValueError, KeyError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ModelError(f"model {card.id}: the {entry.architecture} settings in its card are invalid "
                         f"({first_line})") from None


def load_network(card: ModelCard, role: str | None = None, device: str = "cpu"):
    """Verified weights of ``role`` → ``torch.nn.Module`` in eval mode, float32, on ``device``.

    The file's sha256 is computed in a thread while the network is built and filled (hashing
    releases the GIL: 0.04 s of a 49 MB CT file off the start-up path); nothing is returned, and a
    corrupt file is reported as such, unless the digest matches.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="weights-sha256") as pool:
        verified = pool.submit(verify_weights, card, card.network(role).role)
        try:
            network = _weights_into_network(card, role)
        except ModelError:
            verified.result()  # a file missing, or unloadable because it is corrupt: say that
            raise
        verified.result()
    return network.to(device).eval()


def _weights_into_network(card: ModelCard, role: str | None):
    """The network of ``role`` holding the file's weights as float32, unverified."""
    import torch

    with torch.device("meta"):  # no random initialisation of weights about to be replaced (≈ 0.2 s per CT load)
        network = build_network(card, role)
    try:
        # mapped, not read: the float32 copies below are the only fresh memory (12,000 fewer page faults
        # for the CT weights); every tensor is copied, so no storage keeps the file mapped
        state = torch.load(card.weights_path(role), map_location="cpu", weights_only=True, mmap=True)
        state = {k: v.to(torch.float32 if v.is_floating_point() else v.dtype, copy=True) for k, v in state.items()}
        network.load_state_dict(state, strict=True, assign=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for unreadable / mismatched files
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"weights of model {card.id} cannot be loaded: {first_line}") from None
    if any(t.is_meta for t in (*network.parameters(), *network.buffers())):  # a buffer the file does not hold
        network = build_network(card, role)
        network.load_state_dict(state, strict=True)
    return network
