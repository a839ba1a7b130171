"""Is a case's output folder finished?  What ``batch`` checks before segmenting a case again.

A case counts as done only when ``segment`` finished publishing into its folder: the run manifest
(:mod:`CervixAutoSegLib.outputs`) lists the files of one completed run, none of them is pending (a
run killed between its renames leaves ``pending`` entries), every listed file is there with the
sha256 the manifest gives, and ``report.json`` names no output the manifest lacks.  A worker killed
while it holds a case leaves at most a staging folder beside the case folder (hidden, removed by the
next run into it) and, during the renames, a pending manifest, so neither is mistaken for a result.
"""

from __future__ import annotations

from pathlib import Path

from ..models import file_sha256
from ..outputs import MANIFEST_FILE, read_manifest
from ..pipeline import REPORT_FILE
from ..report import read_report


def incomplete_reason(folder: Path, model: str = "auto") -> str | None:
    """None when ``folder`` holds a finished ``segment`` output (made by ``model`` unless ``"auto"``),
    else a short reason why it does not (for logs and the summary)."""
    folder = Path(folder)
    if not (folder / MANIFEST_FILE).is_file():
        return "not segmented yet"
    manifest = read_manifest(folder)
    if manifest.pending:
        return "an earlier run was interrupted while publishing its files"
    if REPORT_FILE not in manifest.files:
        return "no finished run in the folder"
    for name, digest in sorted(manifest.files.items()):
        path = folder / name
        if path.is_symlink() or not path.is_file():
            return f"{name} is missing"
        if file_sha256(path) != digest:
            return f"{name} changed since it was written"
    report = read_report(folder / REPORT_FILE)
    if report is None:
        return f"{REPORT_FILE} cannot be read"
    missing = [name for name in report.get("outputs", ()) if name not in manifest.files]
    if missing:
        return f"{', '.join(missing)} not in the run manifest"
    if not _made_by(report, model):
        return f"made by model {report.get('model', {}).get('id')}, not {model}"
    return None


def _made_by(report: dict, model: str) -> bool:
    """Whether the report's model answers to ``model`` (auto, a family name or a model id)."""
    choice = (model or "auto").strip().lower()
    if choice == "auto":
        return True
    entry = report.get("model") or {}
    return choice in (str(entry.get("id", "")).lower(), str(entry.get("family", "")).lower())


def labels_file(folder: Path) -> Path | None:
    """The label map a finished run wrote into ``folder`` (``labels.nii.gz`` or ``labels.nrrd``)."""
    from ..pipeline import LABELS_FILE, LABELS_FILE_SHEARED

    for name in (LABELS_FILE, LABELS_FILE_SHEARED):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def sweep_staging(out_dir: str | Path, case_ids: list[str]) -> int:
    """Remove staging folders that killed runs left beside ``out_dir``'s case folders, as seen from
    this host (:func:`CervixAutoSegLib.outputs.remove_stale_staging`: only those of processes that
    are gone); returns how many.  ``batch`` runs it on every worker at the end, because a case whose
    worker died on one host may have been finished on another, which cannot judge the first host's
    processes."""
    from ..outputs import remove_stale_staging

    return sum(len(remove_stale_staging(Path(out_dir) / case_id)) for case_id in case_ids)
