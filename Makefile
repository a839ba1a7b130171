# Two entry points for a newcomer (see README.md):
#   make demo   set up, make a phantom CT, auto-contour it, write every output to demo/
#   make test   set up (incl. dicom3tools and the test extra) and run the pytest suite
PYTHON ?= python3
PIP = $(PYTHON) -m pip --disable-pip-version-check -q
DEMO_DIR ?= demo

EVAL_DIR ?= runs/eval-ct
EVAL_SEEDS ?= 5000 5001 5002 5003 5004 5005 5006 5007 5008 5009
SEGMENT_ARGS ?=

.PHONY: setup setup-test demo test compat evaluate-ct

setup:
	# The CPU build of torch first: a bare "torch" requirement would pull a multi-GB CUDA build.
	$(PIP) install "torch==2.13.0"
	$(PIP) install -e .

setup-test: setup
	command -v dciodvfy >/dev/null || (apt-get update -qq && apt-get install -y -qq dicom3tools >/dev/null)
	$(PIP) install -e ".[test]"

demo: setup
	$(PYTHON) -m CervixAutoSegLib phantom --modality ct --out $(DEMO_DIR)/phantom-ct --seed 7
	$(PYTHON) -m CervixAutoSegLib segment $(DEMO_DIR)/phantom-ct/dicom --out $(DEMO_DIR)/result-ct
	@echo "Outputs in $(DEMO_DIR)/result-ct: labels.nii.gz labels.json segmentation.seg.nrrd rtstruct.dcm report.json preview.png"

# Slicer 5.10+ runs Python 3.12; the package must at least compile and import on 3.10-3.12.
compat:
	bash Testing/check_python_versions.sh

test: setup-test compat
	$(PYTHON) -m pytest -q Testing

# Accuracy of the bundled CT model on held-out phantoms (seeds >= 5000 are never trained on;
# each seed draws its own patient position): segment every case, then DSC/HD95 per structure.
evaluate-ct:
	rm -rf $(EVAL_DIR)
	for seed in $(EVAL_SEEDS); do \
	  $(PYTHON) -m CervixAutoSegLib phantom --modality ct --seed $$seed --out $(EVAL_DIR)/truth/seed$$seed && \
	  $(PYTHON) -m CervixAutoSegLib segment $(EVAL_DIR)/truth/seed$$seed/dicom --out $(EVAL_DIR)/pred/seed$$seed $(SEGMENT_ARGS) \
	    || exit 1; \
	done
	$(PYTHON) -m CervixAutoSegLib evaluate --truth $(EVAL_DIR)/truth --pred $(EVAL_DIR)/pred --out $(EVAL_DIR)/report
