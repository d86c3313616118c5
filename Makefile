# Two entry points (see README): `make demo` and `make test`. Both set up .venv first;
# setup re-runs only when pyproject.toml or constraints.txt changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.pbhw-installed

.PHONY: setup demo test lint bench clean clean-sim
setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: setup
	$(BIN)/pbhw flow examples/mlp_digits.toml -o out/mlp_digits

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n auto --dist loadfile --durations=15

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# Simulator builds are keyed by content hash, so every RTL change leaves its old builds
# behind (several GB over a few weeks); the next test run rebuilds what it needs.
clean-sim:
	rm -rf sim_build
