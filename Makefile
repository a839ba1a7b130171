# Two entry points for a newcomer (see README.md):
#   make demo   set up, make a phantom CT and a phantom T2w MR, auto-contour both, write every output to demo/
#   make test   set up (incl. dicom3tools and the test extra) and run the pytest suite
#
# Everything runs in a virtual environment: the active one when $VIRTUAL_ENV is set, else
# .venv/ in this repository, made with $(PYTHON) (the base interpreter, Python >= 3.10) on
# first use. Never pip into the system Python (Debian's refuses: PEP 668). Set-up steps are
# remembered by stamp files in the venv and redone only when pyproject.toml or this Makefile
# change; `rm -rf .venv` starts over.
PYTHON ?= python3
VENV ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
VENV_PYTHON = $(VENV)/bin/python
PIP = $(VENV_PYTHON) -m pip --disable-pip-version-check -q
# The CPU build of torch first: a bare "torch" requirement would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
DEMO_DIR ?= demo

EVAL_DIR ?=
# runs/eval-ct or runs/eval-mr unless EVAL_DIR is given (expanded in the evaluate-% recipes)
EVAL_OUT = $(or $(EVAL_DIR),runs/eval-$*)
EVAL_SEEDS ?= 5000 5001 5002 5003 5004 5005 5006 5007 5008 5009
SEGMENT_ARGS ?=

VENV_STAMP = $(VENV)/.cervixautoseg-venv.stamp
SETUP_STAMP = $(VENV)/.cervixautoseg-setup.stamp
TEST_STAMP = $(VENV)/.cervixautoseg-setup-test.stamp
APT_INSTALL = apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq

.PHONY: venv setup setup-test dicom3tools demo test compat evaluate-ct evaluate-mr

venv: $(VENV_STAMP)
setup: $(SETUP_STAMP)
setup-test: setup dicom3tools $(TEST_STAMP)

# A venv with a working pip. Debian's python3 needs python3-venv (ensurepip) for `-m venv`:
# installed with apt-get when root, else one line says what to install.
$(VENV_STAMP):
	@set -e; \
	if "$(VENV_PYTHON)" -m pip --version >/dev/null 2>&1; then :; \
	elif [ -n "$(VIRTUAL_ENV)" ] && [ "$(VENV)" = "$(VIRTUAL_ENV)" ]; then \
	  echo "make: the active virtual environment $(VIRTUAL_ENV) has no working python -m pip: deactivate it (or fix it) and run make again" >&2; exit 1; \
	else \
	  command -v "$(PYTHON)" >/dev/null 2>&1 || { echo "make: $(PYTHON) not found: install Python 3.10 or later (Debian/Ubuntu: apt-get install python3 python3-venv) or pass PYTHON=/path/to/python3" >&2; exit 1; }; \
	  "$(PYTHON)" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 10))' || { echo "make: $(PYTHON) is $$("$(PYTHON)" -V 2>&1); CervixAutoSeg needs Python 3.10 or later: pass PYTHON=/path/to/python3.1x" >&2; exit 1; }; \
	  version=$$("$(PYTHON)" -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	  if ! "$(PYTHON)" -c 'import ensurepip, venv' >/dev/null 2>&1; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      echo "make: $(PYTHON) cannot make a virtual environment (no ensurepip): apt-get install python3-venv"; \
	      $(APT_INSTALL) python3-venv >/dev/null || true; \
	      "$(PYTHON)" -c 'import ensurepip' >/dev/null 2>&1 || apt-get install -y -qq "python$$version-venv" >/dev/null 2>&1 || true; \
	    fi; \
	    "$(PYTHON)" -c 'import ensurepip, venv' >/dev/null 2>&1 || { echo "make: $(PYTHON) cannot make a virtual environment: install python3-venv (Debian/Ubuntu, as root: apt-get install python3-venv python$$version-venv) or activate a virtual environment first" >&2; exit 1; }; \
	  fi; \
	  echo "make: creating the virtual environment $(VENV) (Python $$version)"; \
	  "$(PYTHON)" -m venv --clear "$(VENV)"; \
	  "$(VENV_PYTHON)" -m pip --version >/dev/null; \
	fi; \
	touch "$@"

$(SETUP_STAMP): $(VENV_STAMP) pyproject.toml Makefile
	$(PIP) install "$(TORCH)"
	$(PIP) install -e .
	@touch "$@"

$(TEST_STAMP): $(SETUP_STAMP)
	$(PIP) install -e ".[test]"
	@touch "$@"

# dciodvfy validates every DICOM file the tests write.
dicom3tools:
	@command -v dciodvfy >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make: apt-get install dicom3tools (dciodvfy)"; $(APT_INSTALL) dicom3tools >/dev/null; \
	  else \
	    echo "make: the tests need dciodvfy: install dicom3tools (Debian/Ubuntu, as root: apt-get install dicom3tools)" >&2; exit 1; \
	  fi; }

# The phantoms are remade on every run (the phantom command never writes into a full folder).
demo: setup
	rm -rf $(DEMO_DIR)/phantom-ct $(DEMO_DIR)/phantom-mr
	$(VENV_PYTHON) -m CervixAutoSegLib phantom --modality ct --out $(DEMO_DIR)/phantom-ct --seed 7
	$(VENV_PYTHON) -m CervixAutoSegLib segment $(DEMO_DIR)/phantom-ct/dicom --out $(DEMO_DIR)/result-ct
	$(VENV_PYTHON) -m CervixAutoSegLib phantom --modality mr --out $(DEMO_DIR)/phantom-mr --seed 7
	$(VENV_PYTHON) -m CervixAutoSegLib segment $(DEMO_DIR)/phantom-mr/dicom --out $(DEMO_DIR)/result-mr
	@echo "Outputs in $(DEMO_DIR)/result-ct and $(DEMO_DIR)/result-mr: labels.nii.gz labels.json segmentation.seg.nrrd rtstruct.dcm report.json preview.png"

# Slicer 5.10+ runs Python 3.12; the package must at least compile and import on 3.10-3.12:
# the venv's Python, then pyenv's 3.10 and 3.12 when present (each in its own throw-away venv).
compat: setup
	COMPAT_PYTHON="$(VENV_PYTHON)" bash Testing/check_python_versions.sh

test: setup-test compat
	$(VENV_PYTHON) -m pytest -q Testing

# Accuracy of a bundled model on held-out phantoms (seeds >= 5000 are never trained on; each
# seed draws its own patient position, and for MR its plane and obliquity): segment every
# case, then DSC/HD95 per structure.  `make evaluate-ct`, `make evaluate-mr`.
evaluate-ct evaluate-mr: evaluate-%: setup
	rm -rf $(EVAL_OUT)
	for seed in $(EVAL_SEEDS); do \
	  $(VENV_PYTHON) -m CervixAutoSegLib phantom --modality $* --seed $$seed --out $(EVAL_OUT)/truth/seed$$seed && \
	  $(VENV_PYTHON) -m CervixAutoSegLib segment $(EVAL_OUT)/truth/seed$$seed/dicom --out $(EVAL_OUT)/pred/seed$$seed --model $* $(SEGMENT_ARGS) \
	    || exit 1; \
	done
	$(VENV_PYTHON) -m CervixAutoSegLib evaluate --model $* --truth $(EVAL_OUT)/truth --pred $(EVAL_OUT)/pred --out $(EVAL_OUT)/report
