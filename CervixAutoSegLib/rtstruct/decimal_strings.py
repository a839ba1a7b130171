"""Decimal String (DS) formatting that never exceeds the 16 characters DICOM allows.

pydicom would accept longer strings and planning systems (Eclipse among them) then
refuse the file, so the writer formats every coordinate itself.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .uids import DS_MAX_LENGTH

COORDINATE_DECIMALS = 6
"""Coordinates are rounded to 1 nm first: kills float noise such as ``1e-14`` → ``0``."""

_SIGNIFICANT_DIGITS = 10
"""Enough for 0.000001 mm up to ±9999 mm, and at most 16 characters with sign and exponent."""


def format_ds(value: float) -> str:
    """One value as the shortest faithful DS string of at most 16 characters."""
    if not np.isfinite(value):
        raise ValueError(f"a Decimal String cannot hold {value!r}")
    for digits in range(_SIGNIFICANT_DIGITS, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= DS_MAX_LENGTH:
            return text
    raise ValueError(f"{value!r} does not fit a Decimal String")  # pragma: no cover - unreachable for floats


def format_ds_values(values: Iterable[float] | np.ndarray) -> list[str]:
    """Many coordinates (mm) as DS strings, rounded to :data:`COORDINATE_DECIMALS` decimals."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(values)):
        raise ValueError("a Decimal String cannot hold NaN or infinity")
    rounded = np.round(values, COORDINATE_DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
    texts = [f"{v:.{_SIGNIFICANT_DIGITS}g}" for v in rounded.tolist()]
    # The fast path fits for any coordinate below 1e6 mm; anything else takes the careful one.
    return [t if len(t) <= DS_MAX_LENGTH else format_ds(float(t)) for t in texts]


def ds_bytes(texts: list[str]) -> bytes:
    """Backslash-joined multi-valued DS, space-padded to the even length DICOM requires."""
    encoded = "\\".join(texts).encode("ascii")
    return encoded + b" " if len(encoded) % 2 else encoded
