"""Decimal String (DS) formatting that never exceeds the 16 characters DICOM allows.

pydicom would accept longer strings (``str(-0.7071067811865476)`` has 19) and planning
systems (Eclipse among them) then refuse the file, so every DICOM writer of the package
formats its numbers here: :func:`format_ds` one value as faithfully as 16 characters
allow, :func:`format_ds_values` many contour coordinates fast.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .errors import InputError

DS_MAX_LENGTH = 16
"""Characters a Decimal String may hold (PS3.5 6.2)."""

COORDINATE_DECIMALS = 6
"""Coordinates are rounded to 1 nm first: kills float noise such as ``1e-14`` → ``0``."""

_SIGNIFICANT_DIGITS = 10
"""Enough for 0.000001 mm up to ±9999 mm, and at most 16 characters with sign and exponent."""


def format_ds(value: float) -> str:
    """One value as a DS string of at most 16 characters with as many significant digits as fit.

    Raises:
        InputError: for NaN or infinity (a one-line message, as for any bad input).
    """
    value = float(value)
    if not np.isfinite(value):
        raise InputError(f"a DICOM Decimal String cannot hold {value!r}")
    if value == 0.0:
        return "0"  # also for -0.0
    for digits in range(DS_MAX_LENGTH, 0, -1):
        text = f"{value:.{digits}g}"
        if "e" in text:  # "1e-05" -> "1e-5": the exponent's padding costs characters
            mantissa, exponent = text.split("e")
            text = f"{mantissa}e{int(exponent)}"
        if len(text) <= DS_MAX_LENGTH:
            return text
    raise InputError(f"{value!r} does not fit a DICOM Decimal String")  # pragma: no cover - unreachable


def format_ds_values(values: Iterable[float] | np.ndarray) -> list[str]:
    """Many coordinates (mm) as DS strings, rounded to :data:`COORDINATE_DECIMALS` decimals."""
    texts = [f"{v:.{_SIGNIFICANT_DIGITS}g}" for v in _rounded(values).tolist()]
    # The fast path fits for any coordinate below 1e6 mm; anything else takes the careful one.
    return [t if len(t) <= DS_MAX_LENGTH else format_ds(float(t)) for t in texts]


_ALWAYS_FITS = 1e15
"""Below this magnitude ``%.10g`` never needs more than 16 characters (``-1.234567891e+14``)."""


def coordinates_ds_bytes(values: Iterable[float] | np.ndarray) -> bytes:
    """``ds_bytes(format_ds_values(values))``, formatted in one call when every value is small
    enough to fit for sure (contours: hundreds of thousands of coordinates per structure set)."""
    rounded = _rounded(values)
    if rounded.size == 0 or np.abs(rounded).max() >= _ALWAYS_FITS:
        return ds_bytes(format_ds_values(values))
    return _even("\\".join([f"%.{_SIGNIFICANT_DIGITS}g"] * rounded.size) % tuple(rounded.tolist()))


def _rounded(values: Iterable[float] | np.ndarray) -> np.ndarray:
    """Coordinates as a flat float64 array rounded to :data:`COORDINATE_DECIMALS` (InputError if not finite)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(values)):
        raise InputError("a DICOM Decimal String cannot hold NaN or infinity")
    return np.round(values, COORDINATE_DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0


def _even(text: str) -> bytes:
    encoded = text.encode("ascii")
    return encoded + b" " if len(encoded) % 2 else encoded


def ds_bytes(texts: list[str]) -> bytes:
    """Backslash-joined multi-valued DS, space-padded to the even length DICOM requires."""
    return _even("\\".join(texts))
