"""Which torch device runs the network, and how to describe it to a user.

``resolve_device("auto")`` picks CUDA, else Apple MPS, else the CPU.  Asking explicitly
for an accelerator that is not there is a user error (one-line :class:`InputError`),
never a silent fall-back: a physicist who typed ``--device cuda`` wants to know.

torch is imported inside the functions so that the command line stays importable
with numpy alone.
"""

from __future__ import annotations

from typing import Any

from .errors import InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
"""Values accepted by :func:`resolve_device` (and the ``--device`` option)."""

_BYTES_PER_GB = 1024 ** 3


def _mps_available(torch: Any) -> bool:
    backend = getattr(getattr(torch, "backends", None), "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str = "auto") -> Any:
    """``"auto"|"cpu"|"cuda"|"cuda:N"|"mps"`` → ``torch.device``.

    Raises:
        InputError: unknown name, or the requested accelerator is not available.
    """
    import torch

    choice = (name or "auto").strip().lower()
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available(torch):
            return torch.device("mps")
        return torch.device("cpu")
    kind = choice.split(":", 1)[0]
    if kind not in DEVICE_CHOICES:
        raise InputError(f"unknown device {name!r}; use one of {', '.join(DEVICE_CHOICES)}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda was requested but no CUDA GPU is available; use --device cpu or auto")
        device = torch.device(choice)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"CUDA device {device.index} does not exist ({torch.cuda.device_count()} GPU(s) found)")
        return device
    if kind == "mps" and not _mps_available(torch):
        raise InputError("--device mps was requested but Apple MPS is not available; use --device cpu or auto")
    return torch.device(choice)


def describe_device(device: Any) -> str:
    """Human description for the GUI and report: ``"CPU (2 threads)"``, ``"CUDA: <name>, 24.0 GB"``."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        properties = torch.cuda.get_device_properties(index)
        return f"CUDA: {properties.name}, {properties.total_memory / _BYTES_PER_GB:.1f} GB"
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU ({torch.get_num_threads()} threads)"


def is_out_of_memory(error: BaseException) -> bool:
    """True for an accelerator out-of-memory error (CUDA or MPS), whatever torch version raised it."""
    import torch

    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(oom_type, type) and isinstance(error, oom_type):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def release_cached_memory(device: Any) -> None:
    """Give cached accelerator memory back after an out-of-memory error (no-op on CPU)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()
