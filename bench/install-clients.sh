#!/usr/bin/env bash
# The clients and peers `venet bench e2e` runs: sockperf, iperf3, socat (and
# ping), plus matplotlib for --out plots.  --dpdk adds dpdk-testpmd.
set -euo pipefail
pkgs=(sockperf iperf3 socat iputils-ping)
[ "${1:-}" = "--dpdk" ] && pkgs+=(dpdk-dev)     # dpdk-testpmd
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
${PY:-python3} -c "import matplotlib" 2>/dev/null || \
  ${PY:-python3} -m pip install -q --disable-pip-version-check --root-user-action=ignore matplotlib
