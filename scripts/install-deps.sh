#!/usr/bin/env bash
# Install what venet needs on a Debian machine: a C compiler and Python
# headers, iproute2 (the tests make namespaces), and the Python packages.
# Idempotent and quiet when everything is already there.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-python3}

need_apt=()
command -v gcc >/dev/null || need_apt+=(gcc)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v ping >/dev/null || need_apt+=(iputils-ping)
# the clients of venet bench e2e (its smoke test is in the default run)
for tool in sockperf iperf3 socat; do command -v $tool >/dev/null || need_apt+=($tool); done
# tcpdump reads back what venet capture writes; dpdk-dev brings dpdk-testpmd,
# the virtio-user driver of the vhost-user tests and the memif/vhost baselines
command -v tcpdump >/dev/null || need_apt+=(tcpdump)
command -v dpdk-testpmd >/dev/null || need_apt+=(dpdk-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "install-deps: missing ${need_apt[*]}; run as root or install them" >&2
  fi
fi

# atheris (the fuzz harnesses, make fuzz): a binary wheel for CPython 3.11 on
# x86_64 (manylinux2014) needs no clang; without a wheel pip builds it, and
# that needs clang with libFuzzer (apt: clang), so install clang first then.
if ! "$PY" -c "import Cython, numpy, pyroute2, scapy, pytest, pytest_benchmark, hypothesis, faster_fifo, matplotlib, atheris, prometheus_client, rich, pytest_asyncio, uvloop" 2>/dev/null; then
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: -d "${TMPDIR:-/tmp}/venet-atheris" "atheris>=2.3" >/dev/null 2>&1 \
     && ! command -v clang >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang >/dev/null
  fi
  "$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    "Cython>=3.0" "numpy>=1.24" "pyroute2>=0.9" "scapy>=2.5" "pytest>=7" \
    "pytest-benchmark>=4" "hypothesis>=6" "faster-fifo>=1.4" "matplotlib>=3.5" "setuptools>=64" wheel \
    "atheris>=2.3" "prometheus-client>=0.17" "rich>=13" "pytest-asyncio>=0.21" "uvloop>=0.17"
fi
