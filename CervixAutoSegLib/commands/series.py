"""``cervixautoseg series DIR``: list the DICOM image series found in a folder.

Prints one row per series (UID, modality, T2w guess, description, slices, size,
spacing, orientation, patient position) so the user can pick one with ``--series``.
Exit code 0 when at least one CT or MR image series was found, else an InputError
(non-zero, one line on stderr).

With ``--check`` (implied by ``--series``) the series that ``segment`` would use is
chosen by the same rules, read completely and put through the very checks ``segment`` runs
before any heavy work (:func:`CervixAutoSegLib.input_checks.validate_input`: damaged files,
geometry, field of view, memory, voxel values, what the RTSTRUCT writer needs).  Its grid is
printed, then the input warnings ``segment`` would give (an optional header value the RTSTRUCT
leaves out, say), then a one-line verdict; every problem ``segment`` would hit shows up here, as
the same one line on stderr, without running a model.
"""

from __future__ import annotations

import argparse
import json

HELP = "list the DICOM image series in a folder (UID, modality, T2w?, description, size, spacing)"

REPORT_NONUNIFORM_MM = 0.01
"""Slice-position deviations above this are mentioned in the --check summary."""

COLUMNS = ("UID", "modality", "T2w", "description", "slices", "size", "spacing mm", "orientation", "position")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="folder searched recursively for DICOM files")
    parser.add_argument("--json", action="store_true", help="print the list as JSON instead of a table")
    parser.add_argument("--series", metavar="UID", help="Series Instance UID to check (implies --check)")
    parser.add_argument("--modality", choices=("CT", "MR", "ct", "mr"), help="only consider this modality")
    t2 = parser.add_mutually_exclusive_group()
    t2.add_argument("--t2", dest="t2", action="store_const", const=True, default=None,
                    help="treat the MR series as T2-weighted whatever its header says")
    t2.add_argument("--not-t2", dest="t2", action="store_const", const=False,
                    help="treat the MR series as not T2-weighted")
    parser.add_argument("--check", action="store_true",
                        help="choose the series as `segment` would, read it fully and print its grid")


def _t2_label(value: bool | None, modality: str) -> str:
    if modality != "MR":
        return "-"
    return {True: "yes", False: "no", None: "?"}[value]


def _row(info) -> dict:
    spacing = "?"
    if info.pixel_spacing:
        row_spacing, column_spacing = info.pixel_spacing
        between = info.slice_spacing or info.slice_thickness
        spacing = f"{column_spacing:g}x{row_spacing:g}" + (f"x{between:.3g}" if between else "")  # (x, y, z) order
    return {
        "UID": info.series_instance_uid,
        "modality": info.modality or "?",
        "T2w": _t2_label(info.is_t2, info.modality),
        "description": info.description,
        "slices": str(info.n_slices) + (f" (+{len(info.damaged)} damaged)" if info.damaged else ""),
        "size": f"{info.columns}x{info.rows}",
        "spacing mm": spacing,
        "orientation": info.orientation_label + (" (localizer)" if info.is_localizer else ""),
        "position": info.patient_position or "?",
    }


def format_table(rows: list[dict]) -> str:
    """Plain-text table with a header line, columns padded to their widest cell."""
    widths = {name: max([len(name)] + [len(row[name]) for row in rows]) for name in COLUMNS}
    lines = ["  ".join(name.ljust(widths[name]) for name in COLUMNS)]
    lines += ["  ".join(row[name].ljust(widths[name]) for name in COLUMNS) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def describe_volume(volume) -> str:
    """Multi-line grid summary of a loaded volume (LPS mm, (x, y, z) order)."""
    meta = volume.meta
    lines = [
        f"series      {meta.get('series_instance_uid', '?')} ({volume.modality}, '{meta.get('series_description', '')}')",
        f"size x,y,z  {' x '.join(str(n) for n in volume.size_ijk)}",
        f"spacing mm  {', '.join(f'{v:.4g}' for v in volume.spacing)}",
        f"origin LPS  {', '.join(f'{v:.3f}' for v in volume.origin)}",
        "direction   " + "; ".join(",".join(f"{v:.4f}" for v in column) for column in volume.direction.T),
        f"values      {volume.array.dtype} {volume.array.min()} .. {volume.array.max()}",
    ]
    if meta.get("gantry_tilt"):
        lines.append("gantry tilt kept as a sheared grid (slices not perpendicular to the slice axis)")
    if meta.get("slice_spacing_nonuniform", 0.0) > REPORT_NONUNIFORM_MM:
        lines.append(f"slice positions deviate up to {meta['slice_spacing_nonuniform']:.3f} mm from a uniform grid")
    if volume.modality == "MR":
        lines.append(f"T2w         {_t2_label(meta.get('is_t2'), 'MR')}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """List the series (table or JSON), or with --check/--series read one and run segment's input checks."""
    from pathlib import Path

    from ..dicom_series import choose_series, read_series_files, scan_series
    from ..errors import InputError
    from ..input_checks import source_name, validate_input

    folder = Path(args.folder)
    if not folder.exists():
        raise InputError(f"{folder} does not exist")
    scan = scan_series(folder)
    scan.check_found(str(folder))
    infos = scan.series
    if args.check or args.series:
        info = choose_series(infos, series_uid=args.series, modality=args.modality, t2=args.t2, where=str(folder))
        volume = read_series_files(info, t2=args.t2)
        description = describe_volume(volume)
        print(description)
        summary = validate_input(volume, source_name(volume), modality=args.modality or volume.modality)
        for warning in volume.meta.get("input_warnings") or ():  # what segment would warn about, too
            if warning not in description:
                print(f"warning: {warning}")
        print(summary.verdict())
        return 0
    if args.modality:
        infos = [info for info in infos if info.modality == args.modality.upper()]
        if not infos:
            raise InputError(f"no {args.modality.upper()} image series found in {folder}")
    rows = [_row(info) for info in infos]
    if args.json:
        for row, info in zip(rows, infos):
            row.update(is_t2=info.is_t2, supported=info.is_supported, files=len(info.files),
                       damaged_files=[str(file.path) for file in info.damaged])
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
    if not any(info.is_supported for info in infos):
        modalities = ", ".join(sorted({info.modality or "(none)" for info in infos}))
        raise InputError(f"unsupported modality {modalities} in {folder}: only CT and MR image series can be segmented")
    return 0
