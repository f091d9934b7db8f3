#!/usr/bin/env bash
# Builds DPDK's dpdk-testpmd against the installed libdpdk (Debian 12 packages DPDK but not
# testpmd), for the comparison in `dpdk-bench` (docs/benchmarks-dpdk.md).
#
# What it does:
#   1. adds a deb-src entry for bookworm (file /etc/apt/sources.list.d/rtchan-deb-src.sources)
#      unless one already exists, and runs `apt-get update`;
#   2. `apt-get source dpdk` (the source package matching the archive, normally the same
#      version as the installed libdpdk-dev) into a temporary directory;
#   3. compiles only app/test-pmd/*.c with cc and the flags `pkg-config libdpdk` gives (no
#      meson, no ninja), plus the defines app/test-pmd/meson.build adds;
#   4. writes the binary to $TESTPMD_OUT (default: <repo>/target/testpmd/dpdk-testpmd).
#
# PMD-specific testpmd commands (ixgbe, i40e, bnxt, bonding, DPAA) are compiled out: they need
# each driver's private headers and libraries, and nothing here uses them. Everything generic
# (forwarding engines txonly/io/macswap/..., port configuration, statistics) is there.
#
# Needs root for steps 1-2 (apt), network access to the Debian archive, and the packages
# libdpdk-dev, pkg-config, dpkg-dev (for `apt-get source`) and a C compiler.
#
# Environment:
#   TESTPMD_OUT   output path of the binary
#   KEEP_SRC=1    keep the temporary source directory (printed at the end)
#   SKIP_APT=1    do not touch apt sources; use DPDK_SRC=<dir> (an unpacked DPDK source tree)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${TESTPMD_OUT:-$repo/target/testpmd/dpdk-testpmd}"

log() { printf 'build-testpmd: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v pkg-config >/dev/null || die "pkg-config is not installed"
pkg-config --exists libdpdk || die "libdpdk not found by pkg-config (apt-get install libdpdk-dev)"
cc="${CC:-cc}"
command -v "$cc" >/dev/null || die "no C compiler ($cc)"
dpdk_version="$(pkg-config --modversion libdpdk)"
log "installed libdpdk $dpdk_version"

src=""
tmp=""
if [[ "${SKIP_APT:-0}" == 1 ]]; then
    src="${DPDK_SRC:?SKIP_APT=1 needs DPDK_SRC=<unpacked DPDK source tree>}"
else
    [[ $(id -u) == 0 ]] || die "run as root (apt sources and apt-get update), or SKIP_APT=1 DPDK_SRC=<dir>"
    command -v dpkg-source >/dev/null || apt-get install -y --no-install-recommends dpkg-dev
    if ! grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        list=/etc/apt/sources.list.d/rtchan-deb-src.sources
        log "adding $list (deb-src for bookworm)"
        cat >"$list" <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
    apt-get update -qq
    tmp="$(mktemp -d /tmp/rtchan-testpmd.XXXXXX)"
    log "apt-get source dpdk into $tmp"
    # Only download and unpack: no build dependencies, no package build.
    (cd "$tmp" && apt-get source -qq dpdk >/dev/null)
    src="$(find "$tmp" -mindepth 1 -maxdepth 1 -type d -name 'dpdk*' | head -n1)"
    [[ -n "$src" ]] || die "apt-get source did not unpack a dpdk directory in $tmp"
fi
tp="$src/app/test-pmd"
[[ -f "$tp/testpmd.c" && -f "$tp/meson.build" ]] || die "$tp does not look like DPDK's test-pmd"
src_version="$(cat "$src/VERSION" 2>/dev/null || echo unknown)"
log "source tree $src (DPDK $src_version)"
if [[ "$src_version" != "$dpdk_version" ]]; then
    log "warning: source $src_version differs from installed $dpdk_version (same ABI series is fine)"
fi

# The file list: every .c meson.build names (the unconditional list and the conditional
# `sources += files(...)` additions); those under conditions on libraries DPDK was built with
# (bpf, etc.) are kept, since the installed rte_build_config.h enables them.
mapfile -t files < <(grep -oE "'[A-Za-z0-9_]+\.c'" "$tp/meson.build" | tr -d "'" | sort -u)
((${#files[@]} > 0)) || die "no sources found in $tp/meson.build"
log "sources: ${files[*]}"

# Defines: meson.build adds -DALLOW_EXPERIMENTAL_API (testpmd uses experimental APIs) and,
# through `cflags += ...`, nothing else on Linux in 22.11. The PMD-specific macros from
# rte_build_config.h are undefined by a pre-included header, after rte_config.h.
undef="$(mktemp /tmp/rtchan-testpmd-undef.XXXXXX.h)"
trap 'rm -f "$undef"' EXIT
for m in RTE_NET_IXGBE RTE_NET_I40E RTE_NET_BNXT RTE_NET_BOND RTE_NET_DPAA RTE_NET_DPAA2 \
    RTE_NET_SOFTNIC RTE_NET_MLX5 RTE_NET_IAVF RTE_NET_ICE RTE_LIB_PDUMP RTE_HAS_JANSSON; do
    printf '#undef %s\n' "$m" >>"$undef"
done

read -r -a cflags <<<"$(pkg-config --cflags libdpdk)"
read -r -a libs <<<"$(pkg-config --libs libdpdk)"
mkdir -p "$(dirname "$out")"
objdir="$(mktemp -d /tmp/rtchan-testpmd-obj.XXXXXX)"
trap 'rm -f "$undef"; rm -rf "$objdir"' EXIT
objs=()
for f in "${files[@]}"; do
    [[ -f "$tp/$f" ]] || { log "skipping $f (not in this version)"; continue; }
    o="$objdir/${f%.c}.o"
    # -idirafter: a few internal EAL headers testpmd includes (rte_os_shim.h) are not
    # installed by libdpdk-dev; take them from the source tree, after the installed headers.
    "$cc" -O3 -g -std=gnu11 -w -fPIC "${cflags[@]}" -include "$undef" \
        -DALLOW_EXPERIMENTAL_API -DALLOW_INTERNAL_API -Wno-deprecated-declarations \
        -I"$tp" -idirafter "$src/lib/eal/linux/include" -idirafter "$src/lib/eal/include" \
        -c "$tp/$f" -o "$o"
    objs+=("$o")
done
"$cc" -o "$out" "${objs[@]}" "${libs[@]}" -lm -lpthread
log "built $out"
"$out" --version >/dev/null 2>&1 || true

if [[ -n "$tmp" ]]; then
    if [[ "${KEEP_SRC:-0}" == 1 ]]; then
        log "kept the source in $tmp"
    else
        rm -rf "$tmp"
    fi
fi
echo "$out"
