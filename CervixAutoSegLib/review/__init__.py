"""Slice-by-slice review of contours by physicians (issue 16): the ResAU-Net paper's evaluation as a routine tool.

A *review* is one image, the contours of one or two sources (this product's AI output, a
clinic's manual RTSTRUCT, a ``.seg.nrrd`` or a label map) and the grades reviewers give each
slice of each structure on the paper's four-level scale (plus "not assessable").

Modules, by what they hold:

* :mod:`.grades` — the grading scale (values, paper labels, hotkeys, "clinically acceptable");
* :mod:`.model` — plain records: a grade, a review item, the review manifest;
* :mod:`.sources` — contours from any source as masks on the image's own grid;
* :mod:`.flags` — per-slice QA flags of ``report.json``, read tolerantly;
* :mod:`.navigation` — which slices are visited, in which order; next ungraded;
* :mod:`.storage` — the per-reviewer append-only log (fsync per grade), snapshots, replay;
* :mod:`.session` — start a review folder, open it as one reviewer, grade, undo;
* :mod:`.worklist` — a cohort of review folders as one reviewer's worklist (blinded cases shuffled);
* :mod:`.grades_csv` — the long-format exchange CSV of ``../shared/DESIGN.md``;
* :mod:`.summary` — the paper's Table 2 per structure, case and cohort; AI vs manual;
* :mod:`.agreement` — Cohen's kappa, Krippendorff's alpha, bootstrap CIs, large disagreements;
* :mod:`.plots` — the bar/box plot PNG beside the tables;
* :mod:`.report_files` — reading grades from folders and CSVs, writing the summary/agreement files;
* :mod:`.controller` — what the Slicer panel shows and does (no Qt);
* :mod:`.mrml_review` — MRML glue (table nodes, segment statuses, slice jumps), slicer-core only;
* :mod:`.benchmark` — timing of the grading path and of the summaries.

Slice indices are indices of array axis 0 of the image as read (0-based, (z, y, x) arrays),
the ``slice_index`` of ``report.json`` and of the grades CSV; positions are LPS mm.
"""
