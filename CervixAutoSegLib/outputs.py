"""Where a command's outputs may go, and which files already there a ``segment`` run may replace.

Location checks, made before any heavy work so that a bad ``--out`` costs one line, not a
traceback after minutes of network (:class:`OutputError`): :func:`check_output_folder`
(``segment --out``, ``evaluate --out``) and :func:`check_output_file` (``export-rtstruct --out``)
refuse a path below a regular file, an existing path of the wrong kind, and a folder this
process cannot create entries in (tried, not guessed from modes: root, ACLs and read-only
mounts all make modes lie).

Run manifest: ``segment`` keeps :data:`MANIFEST_FILE` (hidden JSON) in its output folder, with the
name and sha256 of every output it wrote there.  A file with one of the output names counts as
*ours* only when the manifest lists it with its current sha256; a user's own ``rtstruct.dcm`` is
not, and neither is one of ours that the user has edited since.  Only ours are replaced or
removed; anything else stops the run before any heavy work (:class:`OutputConflictError`) unless
the caller asks to ``overwrite``.  While the new files are renamed into place the manifest also
lists their hashes as ``pending``, so a kill between two renames leaves a folder in which every
output, old or new, is still recognised as ours and the next run simply replaces them.

Staging folders: ``segment`` assembles its outputs in ``.<out name>.cervixautoseg-staging-<pid>-<random>``
beside the output folder (same file system, so the final renames are atomic), marked by
:data:`STAGING_MARKER` (pid, host and start time of the process).  A SIGKILL leaves it behind with
patient data in it; :func:`remove_stale_staging`, run by the next run into the same folder, removes
every such folder whose process is gone.  Folders of a live process, of another host (a shared file
system: its processes cannot be seen from here) or without a readable marker are left alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from .atomic import write_text_atomic
from .errors import OutputConflictError, OutputError
from .processes import process_alive, process_start

log = logging.getLogger(__name__)

MANIFEST_FILE = ".cervixautoseg-manifest.json"
MANIFEST_FORMAT = "cervixautoseg-output-manifest"
STAGING_TAG = "cervixautoseg-staging"
STAGING_MARKER = ".cervixautoseg-staging.json"
UNMARKED_TAG = "cervixautoseg-unmarked"
"""A staging folder's name until its marker is written (then it is renamed to the staging name)."""
UNMARKED_GRACE_S = 60.0
"""An unmarked folder older than this was left by a run killed while creating it: it never holds
more than the marker (no patient data), so the next run removes it, whatever host made it."""
_PROBE_PREFIX = ".cervixautoseg-probe-"

# OutputError and OutputConflictError live in .errors with the other exceptions (one exit-code table);
# they stay importable from here, where they were first defined.
__all__ = [
    "MANIFEST_FILE", "STAGING_MARKER", "STAGING_TAG", "Manifest", "OutputConflictError", "OutputError",
    "check_output_file", "check_output_folder", "check_replaceable", "file_hashes", "foreign_outputs",
    "make_staging", "read_manifest", "remove_stale_staging", "write_manifest",
]


# ---------------------------------------------------------------- location checks
def check_output_folder(path: str | Path, option: str = "--out", *, staged_beside: bool = False) -> Path:
    """``path`` as given, after checking a folder can be made or written there (:class:`OutputError`).

    ``staged_beside``: the writer also assembles its files in the parent folder
    (``segment``), which must then be writable too.
    """
    path = Path(path)
    full = path.absolute()
    if (full.exists() or full.is_symlink()) and not full.is_dir():
        raise OutputError(f"{option} {path} exists and is not a folder")
    if full.is_dir():
        _check_writable(full, option, path)
    if staged_beside or not full.is_dir():
        _check_writable(_existing_folder_above(full.parent, option, path), option, path)
    return path


def check_output_file(path: str | Path, option: str = "--out", *, example: str = "output") -> Path:
    """``path`` as given, after checking a file can be written there (:class:`OutputError`);
    ``example`` is the file name suggested when ``path`` is a folder."""
    path = Path(path)
    full = path.absolute()
    if full.is_dir():
        raise OutputError(f"{option} {path} is a folder; give the file to write, e.g. {path / example}")
    _check_writable(_existing_folder_above(full.parent, option, path), option, path)
    return path


def _existing_folder_above(path: Path, option: str, shown: Path) -> Path:
    """The nearest existing folder at or above ``path``; OutputError when the nearest existing
    entry is a file (an ``--out`` below a regular file)."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            if not candidate.is_dir():
                raise OutputError(f"{option} {shown}: {candidate} is a file, not a folder")
            return candidate
    return Path(path.anchor or ".")


def _check_writable(folder: Path, option: str, shown: Path) -> None:
    """OutputError unless an entry can be created in ``folder`` (tried with an empty probe folder)."""
    try:
        probe = tempfile.mkdtemp(prefix=_PROBE_PREFIX, dir=folder)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise OutputError(f"{option} {shown}: cannot write in {folder} ({reason})") from None
    os.rmdir(probe)


# ---------------------------------------------------------------- the run manifest
@dataclasses.dataclass(frozen=True)
class Manifest:
    """What an earlier run wrote into a folder: name → sha256 (``pending``: during its renames)."""

    files: Mapping[str, str] = dataclasses.field(default_factory=dict)
    pending: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def lists(self, name: str) -> bool:
        """True when some run of ours wrote ``name`` (so hashing the file is worth it)."""
        return name in self.files or name in self.pending

    def accepts(self, name: str, digest: str) -> bool:
        """True when ``digest`` is what a run of ours left under ``name``."""
        return digest in (self.files.get(name), self.pending.get(name))


def read_manifest(folder: Path) -> Manifest:
    """The manifest in ``folder``; an empty one when there is none or it cannot be read
    (then nothing there counts as ours, the safe side)."""
    path = Path(folder) / MANIFEST_FILE
    if path.is_symlink() or not path.is_file():
        return Manifest()
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format is not {MANIFEST_FORMAT!r}")
        return Manifest(_hash_table(document.get("files", {})), _hash_table(document.get("pending", {})))
    except (OSError, ValueError, AttributeError) as error:
        # info, not warning: the refusal that follows names every file already, on one line
        log.info("%s cannot be read (%s); no file there counts as written by this tool", path, error)
        return Manifest()


def _hash_table(table: object) -> dict[str, str]:
    """A manifest's ``files``/``pending`` entry as name → sha256; ValueError when it is not one."""
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise ValueError("file table is not a mapping of names to sha256")
    return {str(name): digest for name, digest in table.items()}


def write_manifest(folder: Path, staging: Path, files: Mapping[str, str],
                   pending: Mapping[str, str] | None = None) -> None:
    """Replace ``folder``'s manifest atomically; the temporary file lives in ``staging``
    so that a kill can leave nothing inside ``folder`` but the old or the new manifest."""
    from . import __version__

    document = {"format": MANIFEST_FORMAT, "version": 1, "written_by": f"cervixautoseg {__version__}",
                "written_utc": _utc_now(), "files": dict(sorted(files.items()))}
    if pending:
        document["pending"] = dict(sorted(pending.items()))
    write_text_atomic(staging / MANIFEST_FILE, json.dumps(document, indent=2) + "\n")
    os.replace(staging / MANIFEST_FILE, Path(folder) / MANIFEST_FILE)


def file_hashes(folder: Path, names: Iterable[str]) -> dict[str, str]:
    """sha256 of each of ``names`` that is a regular file (not a link) in ``folder``."""
    from .models import file_sha256

    return {name: file_sha256(folder / name) for name in names if _is_plain_file(folder / name)}


def foreign_outputs(folder: Path, names: Iterable[str]) -> list[str]:
    """Those of ``names`` present in ``folder`` that this tool did not write there or that changed since."""
    from .models import file_sha256

    folder = Path(folder)
    if not folder.is_dir():
        return []
    manifest = read_manifest(folder)
    foreign = []
    for name in names:
        path = folder / name
        if not (path.exists() or path.is_symlink()):
            continue
        ours = _is_plain_file(path) and manifest.lists(name) and manifest.accepts(name, file_sha256(path))
        if not ours:
            foreign.append(name)
    return foreign


def check_replaceable(folder: Path, names: Iterable[str], *, overwrite: bool = False, option: str = "--out") -> None:
    """OutputConflictError when ``folder`` holds one of ``names`` that is not ours (unless
    ``overwrite``); OutputError for a folder under one of those names (nothing can replace it)."""
    folder, names = Path(folder), tuple(names)
    blocked = [name for name in (*names, MANIFEST_FILE)
               if (folder / name).is_dir() and not (folder / name).is_symlink()]
    if blocked:
        raise OutputError(f"{option} {folder} holds a folder named {blocked[0]}, where an output file goes; "
                          "move it away or choose another folder")
    foreign = [] if overwrite else foreign_outputs(folder, names)
    if foreign:
        raise OutputConflictError(
            f"{option} {folder} holds {', '.join(foreign)}, which cervixautoseg did not write there (or which "
            "changed since it did); move " + ("it" if len(foreign) == 1 else "them") +
            " away, choose another folder, or pass --overwrite to replace " + ("it" if len(foreign) == 1 else "them"))


def _is_plain_file(path: Path) -> bool:
    """A regular file, not a link: we never write links, so a link under our name is not ours."""
    return path.is_file() and not path.is_symlink()


# ---------------------------------------------------------------- staging folders
def make_staging(out_dir: Path) -> Path:
    """A new, marked staging folder beside ``out_dir`` (whose parent is created if needed)."""
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    # Marked before it gets the staging name: a kill in between leaves an unmarked folder, which
    # remove_stale_staging can recognise as empty, rather than a staging folder nobody can own.
    unmarked = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{UNMARKED_TAG}-{pid}-", dir=out_dir.parent))
    marker = {"format": STAGING_TAG, "out_dir": out_dir.name, "pid": pid, "host": socket.gethostname(),
              "process_started": process_start(pid), "created_utc": _utc_now()}
    write_text_atomic(unmarked / STAGING_MARKER, json.dumps(marker, indent=2) + "\n")
    staging = unmarked.with_name(unmarked.name.replace(UNMARKED_TAG, STAGING_TAG, 1))
    os.rename(unmarked, staging)
    return staging


def remove_stale_staging(out_dir: Path) -> list[Path]:
    """Remove the staging folders a killed run into ``out_dir`` left beside it; returns them."""
    out_dir = Path(out_dir).absolute()
    if not out_dir.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.{STAGING_TAG}-(\d+)-[a-z0-9_]+")
    unmarked = re.compile(rf"\.{re.escape(out_dir.name)}\.{UNMARKED_TAG}-\d+-[a-z0-9_]+")
    removed = []
    with os.scandir(out_dir.parent) as entries:
        folders = [Path(entry.path) for entry in entries if entry.is_dir(follow_symlinks=False)]
    candidates = [folder for folder in folders if pattern.fullmatch(folder.name)]
    for folder in (f for f in folders if unmarked.fullmatch(f.name)):
        with contextlib.suppress(OSError):
            if time.time() - folder.stat().st_mtime > UNMARKED_GRACE_S:
                shutil.rmtree(folder, ignore_errors=True)
                log.info("removed %s, left behind by a run killed while starting", folder)
                removed.append(folder)
    for folder in candidates:
        pid = int(pattern.fullmatch(folder.name).group(1))
        if _abandoned(folder, out_dir.name, pid):
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed %s, left behind by an interrupted run (pid %d)", folder, pid)
            removed.append(folder)
    return removed


def _abandoned(folder: Path, out_name: str, pid: int) -> bool:
    """True when ``folder``'s marker names ``out_name`` and ``pid`` and that process is gone."""
    try:
        marker = json.loads((folder / STAGING_MARKER).read_text(encoding="utf-8"))
        ours = (marker.get("format") == STAGING_TAG and marker.get("out_dir") == out_name
                and marker.get("pid") == pid)
    except (OSError, ValueError, AttributeError):
        return False
    if not ours or marker.get("host") != socket.gethostname():
        return False
    return not process_alive(pid, marker.get("process_started"))


def _utc_now() -> str:
    """Now, UTC, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
