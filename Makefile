# The two set-up commands of the README: `make demo` and `make test`.
# Each installs what it needs first (as root on Debian: apt and pip).
PY ?= python3

.PHONY: deps build demo test bench bench-save bench-compare bench-ring bench-e2e bench-notify bench-syscalls bench-docs soak clean

deps:
	bash scripts/install-deps.sh

build:
	$(PY) setup.py build_ext --inplace -q

demo: deps build
	$(PY) -m venet demo

test: deps build
	$(PY) -m pytest -q tests

BENCH_STORE = --benchmark-storage=file://bench/baselines

bench: build
	$(PY) -m pytest bench --benchmark-only -q

# Save the reference the next runs are compared against (commit the JSON).
bench-save: build
	$(PY) -m pytest bench --benchmark-only -q $(BENCH_STORE) --benchmark-save=baseline

# Compare with the committed baseline; fail if a median doubled (>100%):
# the host moves the vCPUs close or far apart and cross-process rows
# swing up to 3x with it (a 50% limit failed one run in two here).
bench-compare: build
	$(PY) -m pytest bench --benchmark-only -q $(BENCH_STORE) \
	  --benchmark-compare=0001 --benchmark-compare-fail=median:100%

bench-e2e: build
	bash bench/install-clients.sh
	$(PY) -m venet bench e2e --json docs/e2e.json --out docs/e2e

bench-notify: build
	$(PY) -m venet bench notify --json docs/notify-bench.json

bench-syscalls: build
	$(PY) -m venet bench syscalls --json docs/syscall-bench.json

bench-docs:
	$(PY) -m bench.report

bench-ring: build
	$(PY) -m venet bench ring --json docs/ring-bench.json

# The fault and load loops of tests/soak/ (root: namespaces, taps) and the
# ring's long stream; each loop prints a "soak:" summary line.  A quick
# check: make soak SOAK_MINUTES=1 (docs/soak.md lists the other knobs).
SOAK_MINUTES ?= 10
export SOAK_MINUTES
soak: build
	$(PY) -m pytest -q -s -m soak tests

clean:
	rm -rf build *.egg-info
	find . -name '*.so' -delete
	find shmsignal ioq venet bench -name '*.c' -delete
