"""Dataset folders: a clinic's DICOM-RT cohort imported into image + label map pairs.

* :mod:`.manifest` — the ``dataset.json`` manifest: :class:`~.manifest.Dataset`,
  :func:`~.manifest.load_dataset`, :func:`~.manifest.write_dataset`.
* :mod:`.dicom_tree` — walk a DICOM export, group files by patient / study / series, pair each
  RTSTRUCT with the image series it references.
* :mod:`.names` — ROI name → family structure (synonyms, user mapping file, exclusions).
* :mod:`.importer` — ``cervixautoseg dataset import``: all of the above, written atomically.
"""

from .manifest import MANIFEST_FILE, Dataset, DatasetCase, is_dataset, load_dataset, write_dataset

__all__ = ["MANIFEST_FILE", "Dataset", "DatasetCase", "is_dataset", "load_dataset", "write_dataset"]
