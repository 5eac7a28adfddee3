#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine (run as root).
# Idempotent: installed packages are skipped quickly.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need_apt=()
# systemd-container (systemd-nspawn) and debootstrap: the rehearsal provider's hosts.
for pkg in curl jq systemd python3-pip openssh-server openssh-client iproute2 systemd-container debootstrap; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# A real Prometheus text parser checks what /metrics serves.
if ! python3 -c 'import prometheus_client' 2>/dev/null; then
  python3 -m pip install -q 'prometheus-client>=0.17' 2>/dev/null \
    || python3 -m pip install -q --break-system-packages 'prometheus-client>=0.17'
fi
# Fuzz smoke runs: the nightly toolchain and cargo-fuzz (a cold `cargo install` takes minutes;
# skipped once installed). prlimit (util-linux) sets a node's descriptor limit in the hardening tests.
command -v prlimit >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq util-linux >/dev/null; }
rustup toolchain list 2>/dev/null | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
# A local EC2 endpoint (moto_server) for the AWS provider's tests.
if ! command -v moto_server >/dev/null 2>&1; then
  python3 -m pip install -q 'moto[server]>=5.0' 2>/dev/null \
    || python3 -m pip install -q --break-system-packages 'moto[server]>=5.0'
fi
