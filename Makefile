# The two commands of the README: `make run` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOME_DIR ?= var
STAMP  := $(VENV)/.installed

.PHONY: run test setup browser bench clean

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

# Debian's headless Chromium, for the dashboard's browser test (tests/test_server_pages.py):
# installed when missing, if we are root and apt-get is there. Anywhere else this does nothing
# and fails nothing: the browser test then skips with the reason, and fails under CI=true.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's chromium (the browser test's)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium \
	  || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; } \
	  || echo "could not install chromium: the browser test will skip (and fail under CI=true)"; \
	else echo "no chromium, and not root with apt-get: the browser test will skip (and fail under CI=true)"; fi

# The import contracts of the layers (setup.cfg's [importlinter]), then the whole suite
# (SQLite and PostgreSQL, real broker and actors over loopback),
# four test files at a time: the tests mostly wait on processes, not on the CPU (a run
# used about 40 % of two cores; two at a time took 9 min 15 s, four 4 min 54 s).
test: setup browser
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest -q -n 4 --dist loadfile

bench: setup
	$(BIN)/dctrl bench --json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis

# Caravan's own libraries for tests/test_payout_caravan.py (npm; versions pinned in
# tests/wallets/caravan/package-lock.json), installed again only when those files change.
# Without node and npm it says so and that test skips (with CI=true it fails instead).
CARAVAN_STAMP := tests/wallets/caravan/node_modules/.installed
.PHONY: wallets
wallets:
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
	  $(MAKE) -s --no-print-directory $(CARAVAN_STAMP); \
	else echo "make wallets: no node/npm here: tests/test_payout_caravan.py will skip (fail with CI=true)"; fi
$(CARAVAN_STAMP): tests/wallets/caravan/package.json tests/wallets/caravan/package-lock.json
	npm ci --prefix tests/wallets/caravan --no-audit --no-fund
	touch $@
test: wallets
