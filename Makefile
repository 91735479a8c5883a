# The two commands of the README: `make run` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOME_DIR ?= var
STAMP  := $(VENV)/.installed

.PHONY: run test setup bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Run the whole network locally on embedded defaults (home in ./var, SQLite, supervisord).
run: setup
	@test -f $(HOME_DIR)/config.toml || $(BIN)/dctrl init --home $(HOME_DIR)
	$(BIN)/dctrl up --home $(HOME_DIR)

# The import contracts of the layers (setup.cfg's [importlinter]), then the whole suite
# (SQLite and PostgreSQL, real broker and actors over loopback),
# four test files at a time: the tests mostly wait on processes, not on the CPU (a run
# used about 40 % of two cores; two at a time took 9 min 15 s, four 4 min 54 s).
test: setup
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest -q -n 4 --dist loadfile

bench: setup
	$(BIN)/dctrl bench --json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
