# One command each: `make test`, `make data`, `make serve`.
# `make test PYTHON=python3.12` (or 3.13) checks another interpreter in its own venv, .venv-python3.12.
PYTHON ?= python3.11
VENV := $(if $(filter python3.11,$(PYTHON)),.venv,.venv-$(PYTHON))
PY := $(VENV)/bin/python
PORT ?= 3000

.PHONY: test browser postgresql data lint serve samples train-gpu bench bench-serve clean

# The stamp files record which dependency groups the venv holds; they are redone when pyproject.toml changes.
$(VENV)/.runtime: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[runtime]"
	touch $@

$(VENV)/.dev: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[training,dev]"
	touch $@ $(VENV)/.runtime

test: $(VENV)/.dev browser postgresql
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

# The browser test (tests/test_ui.py) drives Debian's Chromium through Debian's chromedriver. As root on Debian
# (CI's fresh machine) they are installed here, non-interactively; where both exist this does nothing. Elsewhere
# it says what to install, and the browser test skips (but fails under CI=true: CI must run it).
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium and chromium-driver for the browser test (apt-get)"; \
		apt-get update -qq </dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 \
			chromium chromium-driver </dev/null; \
	else \
		echo "note: the browser test needs chromium and chromium-driver: sudo apt-get install chromium chromium-driver"; \
	fi

# The shared-study test (tests/test_tune.py) starts its own PostgreSQL server in a temporary folder with Debian's
# initdb and pg_ctl (as an unprivileged user). As root on Debian they are installed here, as for the browser test;
# elsewhere it says what to install, and that test skips saying why.
postgresql:
	@if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1; then \
		true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing postgresql for the shared-study test (apt-get)"; \
		apt-get update -qq </dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 postgresql </dev/null; \
	else \
		echo "note: the shared-study test needs PostgreSQL's server binaries: sudo apt-get install postgresql"; \
	fi

# The web page's picture in README (docs/ui.png): the browser test writes it only when asked, so `make test`
# leaves the tree as it was.
screenshot: $(VENV)/.dev browser
	DIGIT_COMPARE_SCREENSHOT=1 $(PY) -m pytest -q tests/test_ui.py -k test_drawn_digits_are_compared_and_the_answer_shown

# Free-form pairs (two pictures, as /compare gets them) under each prior: docs/freeform.md. Needs MNIST's test
# digits in data/cache/mnist.npz (`make data` fetches them once).
freeform: $(VENV)/.runtime
	$(PY) -m ensemble.freeform --out docs/freeform.md

data: $(VENV)/.dev
	$(PY) -m training.data build --out data/

# Serve the committed models (run-time dependencies only: no torch). PORT=8080 make serve to change the port.
serve: $(VENV)/.runtime
	$(VENV)/bin/bentoml serve service:DigitCompare --port $(PORT)

samples: $(VENV)/.dev
	$(PY) -m training.samples --out samples

# All ten models on one large GPU in about 8 minutes (bf16, wide towers, large batches, pairs drawn by many
# processes), exported, stacked and reported into runs/gpu; copy runs/gpu to models/ to ship them.
train-gpu: $(VENV)/.dev
	$(PY) -m training.run_all --profile gpu --device cuda --jobs 10 --out runs/gpu --score ../shared/course/val.npz

bench: $(VENV)/.dev
	$(PY) -m training.bench
	$(PY) -m export.bench

# The served product under load: in process (fp32 vs int8) and over HTTP; writes docs/bench.md and docs/bench.png.
bench-serve: $(VENV)/.dev
	$(PY) -m ensemble.bench

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
