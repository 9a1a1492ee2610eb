# The two set-up commands of the README: `make demo` and `make test`.
# Each installs what it needs first (as root on Debian: apt and pip).
PY ?= python3

.PHONY: deps build wheel demo test fuzz asan-test bench bench-save bench-compare bench-ring bench-e2e bench-notify bench-syscalls bench-bus bench-switch bench-vhost bench-docs soak clean

deps:
	bash scripts/install-deps.sh

build:
	$(PY) setup.py build_ext --inplace -q

# The installable package: shmsignal, ioq and venet only (bench/ and tests/
# stay in the checkout); lists what the wheel holds.
wheel:
	rm -rf build/dist && $(PY) -m pip wheel . -w build/dist --no-deps --no-build-isolation -q
	$(PY) -m zipfile -l build/dist/venet-*.whl

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

# The bus (256 loopback and 64 tap devices on one daemon), the switch
# (frontends through a venet-switch beside AF_PACKET, an eventfd relay and
# DPDK memif) and the vhost-user connector (DPDK testpmd as the driver);
# root, each writes the JSON that bench-docs renders.
bench-bus: build
	$(PY) -m venet bench bus --json docs/bus-bench.json

bench-switch: build
	bash bench/install-clients.sh --dpdk
	$(PY) -m venet bench switch --json docs/switch-bench.json

bench-vhost: build
	bash bench/install-clients.sh --dpdk
	$(PY) -m venet bench vhost --json docs/vhost-bench.json

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

# Coverage-guided fuzzing (tests/fuzz/, docs/fuzzing.md): FUZZ_SECONDS split
# over the harnesses; what they learn goes to build/fuzz/corpus/, findings to
# build/fuzz/artifacts/.  Fails if any harness found something.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS = control bridge ring pump

fuzz: deps build
	@rm -rf build/fuzz/artifacts; \
	n=$(words $(FUZZ_TARGETS)); per=$$(( $(FUZZ_SECONDS) / $$n )); [ $$per -ge 1 ] || per=1; rc=0; \
	for t in $(FUZZ_TARGETS); do \
	  echo "== fuzz $$t for $$per s"; \
	  $(PY) -m tests.fuzz.fuzz_$$t -max_total_time=$$per -print_final_stats=1 || rc=1; \
	done; \
	if ls build/fuzz/artifacts/* >/dev/null 2>&1; then rc=1; fi; \
	if [ $$rc != 0 ]; then echo "fuzz: findings in build/fuzz/artifacts/" >&2; fi; exit $$rc

# The hostile and fuzz smoke tests against an AddressSanitizer build, made in
# a copy of the tree (build/asan/) so the in-place build stays a normal one.
ASAN_TESTS ?= -k "hostile or fuzz" tests
ASAN_LIB = $(shell gcc -print-file-name=libasan.so)

asan-test: deps
	rm -rf build/asan && mkdir -p build/asan
	git ls-files -z --cached --others --exclude-standard | grep -zv '^build/' | xargs -0 cp --parents -t build/asan
	cd build/asan && find . -name '*.so' -delete && VENET_ASAN=1 $(PY) setup.py build_ext --inplace -q --force
	cd build/asan && LD_PRELOAD=$(ASAN_LIB) ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
	  $(PY) -m pytest -q -p no:cacheprovider $(ASAN_TESTS)

clean:
	rm -rf build *.egg-info
	find . -name '*.so' -delete
	find shmsignal ioq venet bench -name '*.c' -delete
