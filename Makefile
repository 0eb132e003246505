# The two quick-start commands of README.md (metadata: pyproject.toml), and the wheel check of .ci/run.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install demo test wheel-check

install:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"

demo: install
	$(PYTHON) run_recbole_gflowgr.py --model=TIGER --dataset=ml-100k \
		--config_files="properties/gflowgr.yaml properties/small.yaml properties/demo.yaml"

test: install
	$(PYTHON) -m pytest -q tests

wheel-check:  # the installed-package path: wheel, fresh venv, demo main job from an empty folder
	PYTHON=$(PYTHON) .ci/wheel_check.sh
