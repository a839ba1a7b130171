"""Is an MR series T2-weighted?  A verdict and a one-line reason from its DICOM header.

The MR models reproduce PocketNet, which was trained and validated on T2-weighted turbo
(fast) spin-echo images — sagittal and axial T2 TSE, without contrast agent.  The organ and
the tumour are told apart by their T2 contrast (tumour of intermediate signal, brighter than
the dark cervical stroma, darker than fluid); on any other contrast the same grey levels
mean something else and the contours are meaningless.  The clinical rule used here:

* **accepted** (:data:`T2`): T2-weighted spin echo — TSE/FSE, HASTE/SSFSE, SPACE/CUBE/VISTA,
  BLADE/PROPELLER — recognised by long TE *and* long TR, by the Enhanced MR Acquisition
  Contrast ``T2``, or, when timing is missing, by a T2/TSE sequence or series name.
* **refused** (:data:`NOT_T2`): diffusion (DWI, trace, ADC; echo-planar), inversion recovery
  (FLAIR, STIR, TIRM — FLAIR is T2-weighted, but with fluid nulled the fluid/tumour/stroma
  contrast differs from the training images), T1-weighted (incl. VIBE/FLASH/MPRAGE/DCE),
  proton-density, T2*/susceptibility gradient echo, balanced SSFP (TrueFISP/FIESTA), Dixon
  reconstructions (water/fat/in-/opposed-phase), post-contrast series and localizers; also
  any series with a short echo time (TE < 30 ms: T1, PD or gradient-echo weighting).
* **unknown** (:data:`UNKNOWN`): the tags needed to decide are missing — accepted, with a
  warning in the report.

Evidence is weighed in this order, the first rule that decides wins: tags the scanner writes
itself (Image Type, b-value, Acquisition Contrast, Scanning Sequence, Contrast/Bolus Agent),
then refusing words in the Series Description and Sequence Name (the Protocol Name only when
there is no description: GE writes the whole exam's protocol there), then the timing (Echo
Time, Repetition Time), then T2 words.  A refusing word beats T2 timing because a T2-timed
FLAIR or Dixon still has long TE and TR.

Both MR Image Storage (one frame per file, tags at the top level) and Enhanced MR Image
Storage (timing in the Shared/Per-frame Functional Groups: MR Timing and Related Parameters,
MR Echo, MR Image Frame Type, MR Diffusion, MR Modifier) are read.  Users override a refusal
with ``segment --allow-non-t2`` (the panel's "Allow non-T2 MR" box): :func:`check_input_weighting`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, NamedTuple

from .errors import InputError

T2, NOT_T2, UNKNOWN = "t2", "not_t2", "unknown"
"""The three verdicts of :func:`mr_weighting`."""
CHECKED_MODALITY = "MR"
"""Images of this modality are checked: every MR model here is a T2w model."""

T2_MIN_ECHO_TIME_MS = 60.0
"""T2 weighting needs a long echo time (T2 of soft tissue ~50-100 ms)."""
T2_MIN_REPETITION_TIME_MS = 1500.0
"""... and a long repetition time, so that T1 recovery does not dominate."""
SHORT_ECHO_TIME_MS = 30.0
"""Below this echo time an image is T1-, PD- or gradient-echo-weighted, never T2w."""

DIFFUSION_IMAGE_TYPES = frozenset({"ADC", "EADC", "TRACEW", "TRACE", "DIFFUSION", "FA", "DWI", "ISODWI", "CALC_BVALUE"})
"""Image Type (0008,0008) values scanners write on diffusion series and their maps."""
ACQUISITION_CONTRAST_T2 = "T2"
UNDECIDED_CONTRASTS = frozenset({"", "UNKNOWN", "MIXED"})
"""Enhanced MR Acquisition Contrast (0008,9209) values that say nothing either way."""
NO_AGENT = frozenset({"", "none", "no", "n/a", "na", "nil", "0", "-"})
"""Contrast/Bolus Agent values meaning that no agent was given."""

REFUSED_KINDS: tuple[tuple[str, frozenset[str], tuple[str, ...]], ...] = (
    ("diffusion-weighted (DWI/ADC)",
     frozenset({"dwi", "diff", "diffusion", "adc", "trace", "tracew", "ep2d", "resolve", "ivim", "dti", "bval"}),
     ("ep", "re_b")),
    ("FLAIR/STIR (inversion recovery)", frozenset({"flair", "stir", "tirm", "tir", "darkfluid"}), ("tir",)),
    ("T1-weighted", frozenset({"t1", "vibe", "mprage", "spgr", "lava", "thrive", "starvibe", "quick3d", "dce",
                               "twist", "tricks", "perf"}), ("fl", "tfl", "efgre")),
    ("post-contrast", frozenset({"postcontrast", "gad", "gd", "gado", "gadolinium", "ce", "km", "kontrast"}), ()),
    ("proton-density-weighted", frozenset({"pd", "pdw"}), ()),
    ("T2*/susceptibility gradient echo", frozenset({"t2star", "swi", "medic", "merge", "gre", "fgre", "hemo"}),
     ("me2d", "swi")),
    ("balanced steady-state (TrueFISP/FIESTA)", frozenset({"trufi", "truefisp", "fiesta", "bffe", "bssfp"}), ("tfi",)),
    ("a Dixon reconstruction", frozenset({"dixon", "mdixon", "ideal", "opp", "inphase", "opposed"}), ()),
    ("a localizer", frozenset({"localizer", "localiser", "loc", "scout", "survey", "tripilot", "3plane"}), ()),
)
"""(what the series is, refusing words of the descriptions, Sequence Name prefixes), most specific first.
Words match whole tokens, except ``t1``/``t2``, which also match ``t1w``, ``t2_``... but not ``t10``."""
T2_WORDS = frozenset({"t2", "tse", "fse", "frfse", "ssfse", "haste", "space", "spc", "ciss", "blade", "propeller",
                      "cube", "vista"})
T2_SEQUENCE_PREFIXES = ("tse", "spc", "h2d", "fse", "frfse", "ssfse")
"""Sequence Name prefixes of T2 spin-echo trains (Siemens ``*tse2d1_15``, ``*spc_``, ``*h2d1``; GE ``fse``)."""
NAME_FIELDS = (("Series Description", "SeriesDescription"), ("Protocol Name", "ProtocolName"),
               ("Sequence Name", "SequenceName"))


class Weighting(NamedTuple):
    """The verdict of :func:`mr_weighting` (:data:`T2`, :data:`NOT_T2`, :data:`UNKNOWN`) and why, in one line."""

    verdict: str
    reason: str

    @property
    def is_t2(self) -> bool | None:
        """True / False / None (unknown), the older three-valued flag."""
        return {T2: True, NOT_T2: False}.get(self.verdict)


@dataclasses.dataclass(frozen=True)
class SequenceTags:
    """The header facts the verdict is made of (timing in ms, b in s/mm², names as written)."""

    echo_time_ms: float | None
    repetition_time_ms: float | None
    scanning_sequence: frozenset[str]
    image_type: frozenset[str]
    acquisition_contrast: str
    b_value: float | None
    contrast_agent: str
    inversion_recovery: bool
    names: tuple[tuple[str, str], ...]
    """(field title, value) of the non-empty Series Description (else Protocol Name) and Sequence Name."""


# ------------------------------------------------------------------ reading tags
def _value(ds: Any, keyword: str, *sequences: str) -> Any:
    """``keyword`` at the top level, else inside the first item of the Enhanced MR functional groups.

    ``sequences`` names the functional group macro(s) that hold it (e.g. ``MREchoSequence``);
    shared groups are searched before the first frame's (a value shared by all frames lives there).
    """
    value = getattr(ds, keyword, None)
    if value not in (None, ""):
        return value
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        group = _first_item(getattr(ds, groups, None))
        for name in sequences:
            item = _first_item(getattr(group, name, None)) if group is not None else None
            value = getattr(item, keyword, None) if item is not None else None
            if value not in (None, ""):
                return value
    return None


def _first_item(sequence: Any) -> Any:
    try:
        return sequence[0] if sequence is not None and len(sequence) else None
    except (TypeError, IndexError):
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _strings(value: Any) -> frozenset[str]:
    if value in (None, ""):
        return frozenset()
    items = [value] if isinstance(value, (str, bytes)) else list(value)
    return frozenset(part.strip().upper() for item in items for part in str(item).split("\\") if part.strip())


def sequence_tags(ds: Any) -> SequenceTags:
    """The :class:`SequenceTags` of a pydicom dataset (or any object with the keyword attributes)."""
    agent = str(_value(ds, "ContrastBolusAgent") or "").strip()
    usage = _first_item(getattr(ds, "ContrastBolusUsageSequence", None))
    if not agent and usage is not None and str(getattr(usage, "ContrastBolusAgentAdministered", "")).upper() == "YES":
        agent = "administered"
    inversion = str(_value(ds, "InversionRecovery", "MRModifierSequence") or "").upper() == "YES"
    names = [(title, str(getattr(ds, keyword, "") or "").strip()) for title, keyword in NAME_FIELDS]
    if names[0][1]:
        # GE writes the exam's protocol ("PELVIS W/WO GAD") into every series' Protocol Name: it
        # describes the series only when there is no Series Description.
        names = [name for name in names if name[0] != "Protocol Name"]
    return SequenceTags(
        echo_time_ms=_number(_value(ds, "EchoTime")) or _number(_value(ds, "EffectiveEchoTime", "MREchoSequence")),
        repetition_time_ms=_number(_value(ds, "RepetitionTime", "MRTimingAndRelatedParametersSequence")),
        scanning_sequence=_strings(getattr(ds, "ScanningSequence", None)),
        image_type=_strings(getattr(ds, "ImageType", None)),
        acquisition_contrast=str(_value(ds, "AcquisitionContrast", "MRImageFrameTypeSequence") or "").upper(),
        b_value=_number(_value(ds, "DiffusionBValue", "MRDiffusionSequence")),
        contrast_agent=agent,
        inversion_recovery=inversion,
        names=tuple((title, value) for title, value in names if value),
    )


def _words(text: str) -> set[str]:
    """Lower-case tokens; ``T2*`` → ``t2star``, ``+C``/``post contrast``/``post gad`` → ``postcontrast``."""
    text = text.lower().replace("t2*", " t2star ")
    text = re.sub(r"\bpre[\s_-]*(contrast|gad|gd|km)\b", " ", text)  # "pre-contrast" is not post-contrast
    text = re.sub(r"\+\s*c\b|\bc\s*\+|\bpost[\s_-]*(contrast|gad|gd|km)\b", " postcontrast ", text)
    return set(re.findall(r"[a-z0-9]+", text))


def _has_word(words: set[str], word: str) -> bool:
    if word in ("t1", "t2"):  # t1w, t2_tse, t1ffe... but not t10
        return any(w.startswith(word) and (len(w) == 2 or not w[2].isdigit()) for w in words)
    return word in words


# ------------------------------------------------------------------ the verdict
def mr_weighting(ds: Any) -> Weighting:
    """Whether an MR image is T2-weighted, from its DICOM header (rules in the module docstring).

    Args:
        ds: a pydicom dataset of one image (pixel data not needed), MR or Enhanced MR Image
            Storage; any object with the DICOM keyword attributes works.

    Returns:
        ``Weighting(verdict, reason)``: :data:`T2` (accepted), :data:`NOT_T2` (refused unless
        the user allows it) or :data:`UNKNOWN` (accepted with a warning); ``reason`` is one line
        naming the tags that decided, echo and repetition times in ms.
    """
    tags = sequence_tags(ds)
    for rule in (_scanner_refusal, _name_refusal, _timing, _named_t2):
        verdict = rule(tags)
        if verdict is not None:
            return verdict
    return Weighting(UNKNOWN, "T2 weighting not recorded: " + _timing_text(tags)
                     + (f", names {_names_text(tags)}" if tags.names else ", no series or sequence name"))


def _scanner_refusal(tags: SequenceTags) -> Weighting | None:
    """Refusals from tags the scanner writes itself (never typed by a person)."""
    diffusion = sorted(tags.image_type & DIFFUSION_IMAGE_TYPES)
    if diffusion:
        return Weighting(NOT_T2, f"diffusion-weighted (Image Type {'/'.join(diffusion)})")
    if tags.b_value is not None and tags.b_value > 0:
        return Weighting(NOT_T2, f"diffusion-weighted (b = {tags.b_value:g} s/mm²)")
    if "LOCALIZER" in tags.image_type:
        return Weighting(NOT_T2, "a localizer (Image Type LOCALIZER)")
    if tags.acquisition_contrast not in UNDECIDED_CONTRASTS | {ACQUISITION_CONTRAST_T2}:
        return Weighting(NOT_T2, f"Acquisition Contrast {tags.acquisition_contrast}, not T2")
    if "EP" in tags.scanning_sequence:
        return Weighting(NOT_T2, "echo-planar (Scanning Sequence EP): a diffusion or perfusion series")
    if "IR" in tags.scanning_sequence or tags.inversion_recovery:
        return Weighting(NOT_T2, "inversion recovery (FLAIR, STIR or an IR-prepared T1)")
    if tags.contrast_agent.lower() not in NO_AGENT:
        return Weighting(NOT_T2, f"post-contrast (Contrast/Bolus Agent '{tags.contrast_agent}')")
    return None


def _name_refusal(tags: SequenceTags) -> Weighting | None:
    """Refusals from the words of the Series Description, Protocol Name and Sequence Name."""
    for title, text in tags.names:
        words = _words(text)
        sequence = text.lower().lstrip("*") if title == "Sequence Name" else ""
        for kind, refusing, prefixes in REFUSED_KINDS:
            if any(_has_word(words, word) for word in refusing) or (sequence and sequence.startswith(prefixes)):
                return Weighting(NOT_T2, f"{kind} ({title} '{text}')")
    return None


def _timing(tags: SequenceTags) -> Weighting | None:
    """T2 by long TE and TR (or by the Enhanced MR Acquisition Contrast); refused by a short TE."""
    te, tr = tags.echo_time_ms, tags.repetition_time_ms
    if tags.acquisition_contrast == ACQUISITION_CONTRAST_T2:
        return Weighting(T2, f"Acquisition Contrast T2 ({_timing_text(tags)})")
    if te is not None and tr is not None and te >= T2_MIN_ECHO_TIME_MS and tr >= T2_MIN_REPETITION_TIME_MS:
        return Weighting(T2, f"T2 timing: {_timing_text(tags)}")
    if te is not None and 0 < te < SHORT_ECHO_TIME_MS:
        return Weighting(NOT_T2, f"short echo time ({_timing_text(tags)}): T1-, PD- or gradient-echo-weighted")
    return None


def _named_t2(tags: SequenceTags) -> Weighting | None:
    """T2 by name when the timing did not decide (e.g. timing tags removed by an anonymiser)."""
    for title, text in tags.names:
        sequence = text.lower().lstrip("*") if title == "Sequence Name" else ""
        named = any(_has_word(_words(text), word) for word in T2_WORDS)
        if named or (sequence and sequence.startswith(T2_SEQUENCE_PREFIXES)):
            return Weighting(T2, f"T2 spin echo by name ({title} '{text}'; {_timing_text(tags)})")
    return None


def _timing_text(tags: SequenceTags) -> str:
    te, tr = tags.echo_time_ms, tags.repetition_time_ms
    return (f"TE {te:g} ms" if te is not None else "no Echo Time") + ", " + (
        f"TR {tr:g} ms" if tr is not None else "no Repetition Time")


def _names_text(tags: SequenceTags) -> str:
    return ", ".join(f"'{text}'" for _, text in tags.names)


# ------------------------------------------------------------------ the input check
def check_input_weighting(meta: dict, modality: str, *, allow_non_t2: bool = False) -> list[str]:
    """Refuse a non-T2w MR series, or return the warnings for the report (``segment``'s input check).

    Args:
        meta: the image's ``Volume.meta``; a DICOM series carries ``mr_weighting``
            (``{"verdict", "reason"}``, from :func:`mr_weighting` on its first file).
        modality: the image's modality; only :data:`CHECKED_MODALITY` images are checked.
        allow_non_t2: the user's explicit override (``--allow-non-t2``); choosing an MR model
            does not imply it.

    Returns:
        Warning lines for ``report.json`` (empty for a recognised T2w series or a non-MR image).

    Raises:
        InputError: one line, for a series judged :data:`NOT_T2` without ``allow_non_t2``.
    """
    if (modality or "").upper() != CHECKED_MODALITY:
        return []
    found = meta.get("mr_weighting")
    if not found:
        source = meta.get("source", "volume")
        return [f"T2 weighting not checked: the {source} input has no DICOM sequence tags; "
                "the MR model expects a T2-weighted image"]
    verdict, reason = found["verdict"], found["reason"]
    series = meta.get("series_instance_uid", "")
    description = meta.get("series_description", "")
    name = f"series {series}" + (f" ('{description}')" if description else "")
    if verdict == NOT_T2 and not allow_non_t2:
        raise InputError(f"{name} is not T2-weighted: {reason}; the MR model was trained on T2-weighted "
                         "images (pass --allow-non-t2 to contour it anyway)")
    if verdict == NOT_T2:
        return [f"{name} is not T2-weighted ({reason}): contoured anyway because --allow-non-t2 was given"]
    if verdict == UNKNOWN:
        return [f"T2 weighting of {name} could not be verified ({reason}): contoured as if T2-weighted"]
    return []
