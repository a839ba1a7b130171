"""ROI names of a clinic's RTSTRUCTs → the family's structures (TG-263 names).

Planning systems and physicians spell the same organ many ways ("Bladder", "BLADDER_O",
"bladder", "CTV_N", "CTV Nodes", "CTVn_4500") and keep helper structures next to it
("Rectum_PRV05", "z_opt_bladder", "PTV_4500", "CTVn+7mm").  The rules, in order:

1. **Exclusions.**  A ROI matching a user ``exclude`` glob, or (unless the mapping file sets
   ``"default_exclusions": false``) one of :data:`DEFAULT_EXCLUSIONS` (PRV, PTV, planning,
   optimisation, ``z_``/``zz`` helpers, rings, margin expansions), is never a candidate.  An
   exact user name beats an exclusion (the user said so explicitly).
2. **Candidates**, each with a rank: 0 exact user name, 1 user glob, 2 the structure's TG-263
   or paper name, 3 a built-in synonym (:data:`CervixAutoSegLib.rtstruct.reader.SYNONYMS`) or
   built-in pattern (:data:`BUILTIN_PATTERNS`: dose suffixes such as ``CTVn_4500``).  Matching is
   case-insensitive; spaces, ``_``, ``-`` and ``.`` are ignored for ranks 2 and 3.  A ROI name
   that matches two structures at its best rank is itself ambiguous and maps to neither.
3. **Decision per structure**: the candidates of the best rank present; exactly one non-empty
   ROI → ``matched``; none → ``missing``; two or more → ``ambiguous`` (never guessed: the
   report lists them and a mapping file settles it).  An empty ROI (no contour on the image)
   is dropped from the candidates and noted.

User mapping file (JSON, ``--names MAP``)::

    {"map": {"Blase": "Bladder", "CTV_LK_*": "CTVn"},     # exact names or globs (* ? [..])
     "exclude": ["*_old", "Rectum_2"],                    # globs, case-insensitive
     "default_exclusions": true}
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from ..errors import InputError
from ..structures import Structure

RANK_USER_NAME, RANK_USER_PATTERN, RANK_NAME, RANK_SYNONYM = 0, 1, 2, 3
RULES = {RANK_USER_NAME: "user name", RANK_USER_PATTERN: "user pattern", RANK_NAME: "TG-263 name",
         RANK_SYNONYM: "synonym"}

DEFAULT_EXCLUSIONS: tuple[str, ...] = (
    "*prv*", "ptv*", "*_ptv*", "z_*", "z-*", "z *", "zz*", "*opt*", "*planning*", "*ring*", "*avoid*",
    "*dummy*", "*helper*", "*_old", "*_eval*",
)
"""Globs (case-insensitive) of helper structures: planning risk volumes, optimisation and ring
structures, ``z_`` helpers, old copies.  None of them is a structure the models contour."""

MARGIN_EXPANSION = re.compile(r"[+-]\s*\d+(\.\d+)?\s*(mm|cm)\b|\bexp\d*\b", re.IGNORECASE)
"""``CTVn+7mm``, ``Bladder-3mm``, ``CTV_exp``: expansions of a structure, not the structure."""

BUILTIN_PATTERNS: Mapping[str, tuple[str, ...]] = {
    # Squashed names (lower case, no separators); an optional dose in cGy/Gy is the only suffix allowed.
    "bladder": (r"(urinary)?bladder(o|wall)?", r"blase"),
    "rectum": (r"rectum(o)?", r"rektum"),
    "ctvn": (r"ctv(n|nodes?|nodal|ln|lk|pelvicnodes?|pelvicln|e|elec)(\d{2,4}(gy|cgy)?)?", r"ctvn\d+"),
    "ctvp": (r"ctv(p|uv|primary|uterus|cervix|t)(\d{2,4}(gy|cgy)?)?",),
    "uterus_cx_vagina": (r"uterus(cx|cervix)?(vagina)?", r"uteruscervixvagina"),
    "gtvp": (r"gtv(p|t|primary)?(\d{2,4}(gy|cgy)?)?", r"tumou?r"),
}
"""Regular expressions (full match on the squashed ROI name) per lower-case TG-263 name."""

_DISAMBIGUATION = re.compile(r" \(ROI \d+\)$")
"""Suffix the RTSTRUCT reader adds to a name several ROIs share (see ``read_rtstruct_masks``)."""
_GLOB_CHARACTERS = frozenset("*?[")


@dataclasses.dataclass(frozen=True)
class NameRules:
    """A user's mapping on top of the built-in rules (see the module docstring)."""

    exact: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Lower-case ROI name → TG-263 name."""
    patterns: tuple[tuple[str, str], ...] = ()
    """(lower-case glob, TG-263 name), in file order."""
    exclude: tuple[str, ...] = ()
    default_exclusions: bool = True
    source: str = "built-in"

    def describe(self) -> dict:
        """JSON-able summary for the import report (no ROI data)."""
        return {"source": self.source, "user_names": len(self.exact), "user_patterns": len(self.patterns),
                "exclude": list(self.exclude), "default_exclusions": self.default_exclusions}


@dataclasses.dataclass(frozen=True)
class RoiVerdict:
    """What one ROI name became: a candidate for ``structure`` (by ``rule``), excluded, or unmatched."""

    roi: str
    structure: str | None
    rule: str | None
    excluded: str | None = None
    """The exclusion glob or reason, when excluded."""


@dataclasses.dataclass(frozen=True)
class StructureMatch:
    """The decision for one structure of the family in one RTSTRUCT."""

    structure: str
    status: str
    """``matched``, ``missing`` or ``ambiguous``."""
    roi: str | None = None
    rule: str | None = None
    candidates: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict:
        entry: dict = {"status": self.status}
        if self.roi is not None:
            entry.update(roi=self.roi, rule=self.rule)
        if self.candidates and self.status != "matched":
            entry["candidates"] = list(self.candidates)
        if self.notes:
            entry["notes"] = list(self.notes)
        return entry


def squash(name: str) -> str:
    """Lower case without spaces, ``_``, ``-``, ``.``: ``"CTV_N 45.00"`` → ``"ctvn4500"``."""
    return re.sub(r"[\s_\-.]+", "", name.lower())


def plain_name(name: str) -> str:
    """A ROI name without the reader's `` (ROI n)`` suffix, whitespace collapsed."""
    return " ".join(_DISAMBIGUATION.sub("", name).split())


def load_name_rules(path: str | Path | None, structures: Sequence[Structure]) -> NameRules:
    """The rules of a user mapping file (None: built-in rules only); InputError on a bad file."""
    if path is None:
        return NameRules()
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise InputError(f"--names {path}: cannot read it as JSON ({' '.join(str(error).split())})") from None
    if not isinstance(document, dict) or not set(document) <= {"map", "exclude", "default_exclusions"}:
        raise InputError(f"--names {path}: expected an object with 'map', 'exclude' and 'default_exclusions'")
    known = {s.name.lower(): s.name for s in structures}
    exact: dict[str, str] = {}
    patterns: list[tuple[str, str]] = []
    mapping = document.get("map", {})
    if not isinstance(mapping, dict):
        raise InputError(f"--names {path}: 'map' must map ROI names or globs to structure names")
    for roi, target in mapping.items():
        structure = known.get(str(target).lower())
        if structure is None:
            raise InputError(f"--names {path}: {roi!r} maps to {target!r}, which is not one of "
                             f"{', '.join(s.name for s in structures)}")
        key = plain_name(str(roi)).lower()
        if _GLOB_CHARACTERS & set(key):
            patterns.append((key, structure))
        else:
            exact[key] = structure
    exclude = document.get("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(item, str) for item in exclude):
        raise InputError(f"--names {path}: 'exclude' must be a list of names or globs")
    defaults = document.get("default_exclusions", True)
    if not isinstance(defaults, bool):
        raise InputError(f"--names {path}: 'default_exclusions' must be true or false")
    return NameRules(exact, tuple(patterns), tuple(e.lower() for e in exclude), defaults, str(path))


def exclusion(name: str, rules: NameRules) -> str | None:
    """The user or default exclusion that ``name`` matches (its glob, or ``margin expansion``), or None."""
    key = plain_name(name).lower()
    for glob in rules.exclude:
        if fnmatch.fnmatchcase(key, glob):
            return f"user exclusion {glob}"
    if not rules.default_exclusions:
        return None
    for glob in DEFAULT_EXCLUSIONS:
        if fnmatch.fnmatchcase(key, glob):
            return f"default exclusion {glob}"
    if MARGIN_EXPANSION.search(key):
        return "default exclusion: margin expansion"
    return None


def classify_roi(name: str, structures: Sequence[Structure], rules: NameRules) -> RoiVerdict:
    """The verdict for one ROI name (see the module docstring for the order of the rules)."""
    from ..rtstruct.reader import SYNONYMS

    key = plain_name(name).lower()
    if key in rules.exact:
        return RoiVerdict(name, rules.exact[key], RULES[RANK_USER_NAME])
    excluded = exclusion(name, rules)
    if excluded:
        return RoiVerdict(name, None, None, excluded)
    pattern_hits = {target for glob, target in rules.patterns if fnmatch.fnmatchcase(key, glob)}
    if pattern_hits:
        return _one_of(name, pattern_hits, RANK_USER_PATTERN)
    named = {s.name for s in structures if key in (s.name.lower(), " ".join(s.paper_name.lower().split()))}
    if named:
        return _one_of(name, named, RANK_NAME)
    squashed = squash(key)
    synonyms = set()
    for structure in structures:
        canonical = structure.name.lower()
        spellings = {squash(text) for text in SYNONYMS.get(canonical, ())}
        regexes = BUILTIN_PATTERNS.get(canonical, ())
        if squashed in spellings or any(re.fullmatch(regex, squashed) for regex in regexes):
            synonyms.add(structure.name)
    if synonyms:
        return _one_of(name, synonyms, RANK_SYNONYM)
    return RoiVerdict(name, None, None)


def _one_of(name: str, targets: Collection[str], rank: int) -> RoiVerdict:
    """A verdict for a single target; a name fitting several structures at one rank fits none."""
    if len(targets) == 1:
        return RoiVerdict(name, next(iter(targets)), RULES[rank])
    return RoiVerdict(name, None, None, f"fits several structures ({', '.join(sorted(targets))})")


def match_structures(
    roi_names: Sequence[str],
    structures: Sequence[Structure],
    rules: NameRules,
    empty: Collection[str] = (),
) -> tuple[dict[str, StructureMatch], list[RoiVerdict]]:
    """Decide every structure of ``structures`` from the ROI names of one RTSTRUCT.

    Args:
        roi_names: the ROI names (unique; the reader's `` (ROI n)`` suffix marks repeated ones).
        structures: the family's structures.
        rules: the user's mapping on top of the built-in rules.
        empty: ROI names whose masks are empty on the image grid (dropped from the candidates).

    Returns:
        TG-263 name → :class:`StructureMatch`, and the verdict of every ROI in input order.
    """
    verdicts = [classify_roi(name, structures, rules) for name in roi_names]
    rank_of = {rule: rank for rank, rule in RULES.items()}
    matches = {}
    for structure in structures:
        mine = [v for v in verdicts if v.structure == structure.name]
        notes = tuple(f"ROI {plain_name(v.roi)!r} is empty on the image grid" for v in mine if v.roi in empty)
        usable = [v for v in mine if v.roi not in empty]
        if not usable:
            matches[structure.name] = StructureMatch(structure.name, "missing", notes=notes)
            continue
        best = min(rank_of[v.rule] for v in usable)
        chosen = [v for v in usable if rank_of[v.rule] == best]
        others = tuple(plain_name(v.roi) for v in usable)
        if len(chosen) == 1:
            outranked = tuple(f"ROI {plain_name(v.roi)!r} ({v.rule}) outranked by {RULES[best]}"
                              for v in usable if v is not chosen[0])
            matches[structure.name] = StructureMatch(structure.name, "matched", chosen[0].roi, chosen[0].rule,
                                                     others, notes + outranked)
        else:
            matches[structure.name] = StructureMatch(structure.name, "ambiguous", None, None,
                                                     tuple(plain_name(v.roi) for v in chosen), notes)
    return matches, verdicts
