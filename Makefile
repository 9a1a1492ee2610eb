# The two set-up commands of the README: `make demo` and `make test`.
# Each installs what it needs first (as root on Debian: apt and pip).
PY ?= python3

.PHONY: deps build demo test bench bench-ring soak clean

deps:
	bash scripts/install-deps.sh

build:
	$(PY) setup.py build_ext --inplace -q

demo: deps build
	$(PY) -m venet demo

test: deps build
	$(PY) -m pytest -q tests

bench: build
	$(PY) -m pytest bench --benchmark-only -q

bench-ring: build
	$(PY) -m venet bench ring --json docs/ring-bench.json

soak: build
	$(PY) -m pytest -q -m soak tests

clean:
	rm -rf build *.egg-info
	find . -name '*.so' -delete
	find shmsignal ioq venet bench -name '*.c' -delete
