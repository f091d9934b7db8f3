#!/usr/bin/env bash
# Runs every check rtchan has: formatting, lints, docs, all tests without DPDK, then the DPDK
# build and its tests (net_null, net_pcap, net_ring vdevs), then AF_XDP over veth. On a fresh Debian 12 machine run it as
# root: it installs the system packages it needs first (DPDK 22.11, libclang for bindgen).
set -euo pipefail
cd "$(dirname "$0")/.."
# rustup installs cargo here; a non-login shell may not have it on PATH.
[[ -d "$HOME/.cargo/bin" ]] && export PATH="$HOME/.cargo/bin:$PATH"
# Tests that need an optional tool (tshark, tmux, promtool, systemd-analyze) print SKIPPED
# without it, but fail when CI is set: this script is what CI runs.
export CI=${CI:-true}

PKGS=(libdpdk-dev dpdk librte-net-pcap23 libclang-dev clang pkg-config libpcap-dev iproute2
      libxdp-dev libbpf-dev tcpdump prometheus tshark tmux gcc g++ binutils systemd)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "test.sh: missing packages ${missing[*]}; run as root or: apt-get install ${missing[*]}" >&2
    exit 2
  fi
  echo "== installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Recommends stay on (dpdk pulls its mempool and PMD drivers through them), but no service
  # may start: prometheus and prometheus-node-exporter would otherwise keep running next to
  # the timing tests. A policy-rc.d that exits 101 tells invoke-rc.d not to start anything.
  # An existing policy-rc.d (container images ship one) is left as it is.
  policy=/usr/sbin/policy-rc.d
  ours=
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    ours=1
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get install -y -qq "${missing[@]}" >/dev/null
  if [[ -n $ours ]]; then
    rm -f "$policy"
    trap - EXIT
  fi
fi

# Keep the build parallel but bounded on small machines.
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (no DPDK)"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo clippy (--features dpdk,af_xdp; the evaluation with af_xdp,dpdk)"
cargo clippy -p rtchan --all-targets --features dpdk,af_xdp -- -D warnings
cargo clippy -p rtchan-eval --all-targets --features af_xdp,dpdk -- -D warnings

echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --features dpdk,af_xdp --quiet

echo "== tests (workspace, no DPDK)"
cargo test --workspace

echo "== tests (DPDK vdevs; one at a time: they share one EAL and measure timing)"
cargo test -p rtchan --features dpdk --test dpdk_port --test dpdk_pcap --test daemon_dpdk --test daemon_dpdk_pcap --test daemon_dpdk_netns --test daemon_dpdk_steering --test daemon_one_ledger --test dpdk_veth -- --test-threads=1
# The evaluation's experiment 4 on the DPDK bed (net_af_packet vdevs on a veth pair).
cargo test -p rtchan-eval --features dpdk --test eval_quick dpdk_ -- --test-threads=1

echo "== tests (AF_XDP over a veth pair in two namespaces; needs root)"
cargo test -p rtchan --features af_xdp --test afxdp_veth --test daemon_netns --test daemon_multiqueue -- --test-threads=1
# The evaluation's experiment 4 in real time over AF_XDP (the workspace run above did it over
# af_packet; experiment 3 on veth, veth_fairness, is ignored: see its attribute).
cargo test -p rtchan-eval --features af_xdp --test eval_quick veth_ -- --test-threads=1

echo "== all checks passed"
