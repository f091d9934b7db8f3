//! Build script: with the `dpdk` feature, generates DPDK bindings (see `src/ports/dpdk`).
//!
//! Without the feature it does nothing and needs nothing (no libdpdk, no libclang).
//!
//! With it:
//! 1. finds libdpdk with pkg-config (`PKG_CONFIG_PATH` is honoured) and emits its link flags;
//! 2. runs bindgen over `src/ports/dpdk/wrapper.h` with an allowlist of the `rte_*` items the
//!    `dpdk` module uses (plus `rte_sched_*` for the scheduler benchmark), writing
//!    `$OUT_DIR/dpdk_bindings.rs`, which `src/ports/dpdk/ffi.rs` includes;
//! 3. has bindgen write, with `wrap_static_fns`, a C file of out-of-line wrappers
//!    (`<name>__extern`) for the allowlisted `static inline` functions (`rte_eth_rx_burst`,
//!    `rte_pktmbuf_alloc`, ...), and compiles it with cc into a static library linked into the
//!    crate, using the same include paths and flags DPDK's pkg-config file asks for.
//!
//! With the `af_xdp` feature (module `afxdp` below, independent of the DPDK part), it finds
//! libxdp and libbpf with pkg-config, runs bindgen over `src/ports/afxdp/wrapper.h` (the `xsk_*`
//! set-up functions and the ring types), writes `$OUT_DIR/afxdp_bindings.rs` (included by
//! `src/ports/afxdp/ffi.rs`), and compiles the `wrap_static_fns` shim for the `static inline`
//! `rtchan_xsk_*` ring helpers of `wrapper.h` into `librtchan_afxdp_shim.a`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // The feature's cfg is what compiles the generator in; the variable is checked too so a
    // build script compiled once serves both configurations correctly.
    #[cfg(feature = "dpdk")]
    if std::env::var_os("CARGO_FEATURE_DPDK").is_some() {
        dpdk::generate();
    }
    #[cfg(feature = "af_xdp")]
    if std::env::var_os("CARGO_FEATURE_AF_XDP").is_some() {
        afxdp::generate();
    }
}

/// What the two generators share: the bindgen set-up, the allowlists, the link flags.
#[cfg(any(feature = "dpdk", feature = "af_xdp"))]
mod common {
    use std::path::{Path, PathBuf};

    /// The items a generator allowlists.
    pub struct Allowlist {
        pub functions: &'static [&'static str],
        pub vars: &'static [&'static str],
        pub types: &'static [&'static str],
    }

    /// Runs bindgen over `header` with `allow`, writing `$OUT_DIR/<out_name>.rs`, and has it
    /// write the `wrap_static_fns` C shim to `<wrappers>.c`, which it returns. `tune` adds
    /// generator-specific options.
    pub fn bindgen(
        header: &Path,
        clang_args: &[String],
        allow: &Allowlist,
        wrappers: &Path,
        out_name: &str,
        tune: impl FnOnce(bindgen::Builder) -> bindgen::Builder,
    ) -> PathBuf {
        let mut builder = bindgen::Builder::default()
            .header(header.to_str().expect("UTF-8 path"))
            .clang_args(clang_args)
            .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
            .use_core()
            .generate_comments(false)
            .derive_default(true)
            .derive_debug(true)
            .layout_tests(true)
            .prepend_enum_name(false)
            .default_enum_style(bindgen::EnumVariation::Consts)
            .wrap_static_fns(true)
            .wrap_static_fns_path(wrappers);
        builder = tune(builder);
        for f in allow.functions {
            builder = builder.allowlist_function(f);
        }
        for v in allow.vars {
            builder = builder.allowlist_var(v);
        }
        for t in allow.types {
            builder = builder.allowlist_type(t);
        }
        let bindings = builder.generate().unwrap_or_else(|e| {
            panic!(
                "bindgen failed on {} (is libclang-dev installed?): {e}",
                header.display()
            )
        });
        let out = PathBuf::from(env("OUT_DIR")).join(format!("{out_name}.rs"));
        bindings
            .write_to_file(&out)
            .unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
        // bindgen writes `<path>.c`, including the header by absolute path.
        wrappers.with_extension("c")
    }

    /// One backend's bindings and C shim: bindgen over `src/ports/<dir>/wrapper.h` with `allow`
    /// (into `$OUT_DIR/<dir>_bindings.rs`, its `static inline` functions wrapped in
    /// `<dir>_static_wrappers.c`), then that shim compiled into `librtchan_<dir>_shim.a` with
    /// `includes`. Shims are one-line forwarding functions on the per-packet path, so they are
    /// optimised even in debug builds. `tune_bindgen` and `tune_cc` add the backend's options.
    pub fn shim(
        dir: &str,
        allow: &Allowlist,
        (clang_args, includes): (&[String], &[PathBuf]),
        tune_bindgen: impl FnOnce(bindgen::Builder) -> bindgen::Builder,
        tune_cc: impl FnOnce(&mut cc::Build),
    ) {
        let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
        let out_dir = PathBuf::from(env("OUT_DIR"));
        let src = manifest_dir.join("src/ports").join(dir);
        let header = src.join("wrapper.h");
        println!("cargo:rerun-if-changed={}", header.display());
        let wrappers = out_dir.join(format!("{dir}_static_wrappers"));
        let c = bindgen(
            &header,
            clang_args,
            allow,
            &wrappers,
            &format!("{dir}_bindings"),
            tune_bindgen,
        );
        let mut cc = cc::Build::new();
        cc.file(&c)
            .includes(includes)
            .include(&src)
            .warnings(false)
            .opt_level(2);
        tune_cc(&mut cc);
        cc.compile(&format!("rtchan_{dir}_shim"));
    }

    /// Link search paths and libraries of `libs`, in order. Emitted after the shim library, so
    /// that the static shim comes before the shared libraries it calls.
    pub fn emit_link_flags(libs: &[&pkg_config::Library]) {
        for lib in libs {
            for path in &lib.link_paths {
                println!("cargo:rustc-link-search=native={}", path.display());
            }
            for name in &lib.libs {
                println!("cargo:rustc-link-lib={name}");
            }
        }
    }

    pub fn env(name: &str) -> String {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
    }
}

#[cfg(feature = "dpdk")]
mod dpdk {
    use super::common::{self, Allowlist};
    use std::process::Command;

    /// Functions the safe layer calls, non-inline and `static inline` alike.
    const FUNCTIONS: &[&str] = &[
        // EAL
        "rte_eal_init",
        "rte_eal_cleanup",
        "rte_eal_get_runtime_dir",
        "rte_strerror",
        "rte_lcore_id",
        "rte_socket_id",
        "rte_thread_register",
        "rte_thread_unregister",
        "rte_dev_probe",
        // ethdev
        "rte_eth_dev_count_avail",
        "rte_eth_find_next",
        "rte_eth_dev_is_valid_port",
        "rte_eth_dev_get_port_by_name",
        "rte_eth_dev_get_name_by_port",
        "rte_eth_dev_info_get",
        "rte_eth_dev_socket_id",
        "rte_eth_dev_configure",
        "rte_eth_dev_adjust_nb_rx_tx_desc",
        "rte_eth_rx_queue_setup",
        "rte_eth_tx_queue_setup",
        "rte_eth_dev_start",
        "rte_eth_dev_stop",
        "rte_eth_dev_close",
        "rte_eth_dev_get_mtu",
        "rte_eth_dev_set_mtu",
        "rte_eth_promiscuous_enable",
        "rte_eth_macaddr_get",
        "rte_eth_link_get_nowait",
        "rte_eth_stats_get",
        "rte_eth_stats_reset",
        "rte_eth_xstats_get",
        "rte_eth_xstats_get_names",
        // rte_flow (receive steering)
        "rte_flow_validate",
        "rte_flow_create",
        "rte_flow_destroy",
        "rte_flow_flush",
        // telemetry
        "rte_telemetry_register_cmd",
        "rte_tel_data_.*",
        "rte_eth_rx_burst",
        "rte_eth_tx_burst",
        // mbuf / mempool
        "rte_pktmbuf_pool_create",
        "rte_pktmbuf_alloc",
        "rte_pktmbuf_alloc_bulk",
        "rte_pktmbuf_free",
        "rte_pktmbuf_free_bulk",
        "rte_pktmbuf_data_room_size",
        "rte_pktmbuf_headroom",
        "rte_pktmbuf_tailroom",
        "rte_mempool_free",
        "rte_mempool_avail_count",
        "rte_mempool_in_use_count",
        // rte_sched, for the librte_sched comparison benchmark
        "rte_sched_.*",
        // hand-written helpers in wrapper.h
        "rtchan_.*",
    ];

    /// Constants (`#define`s) the safe layer reads.
    const VARS: &[&str] = &[
        "RTE_MAX_ETHPORTS",
        "RTE_MAX_LCORE",
        "RTE_PKTMBUF_HEADROOM",
        "RTE_MBUF_DEFAULT_DATAROOM",
        "RTE_MBUF_DEFAULT_BUF_SIZE",
        "RTE_MEMPOOL_CACHE_MAX_SIZE",
        "RTE_DEV_NAME_MAX_LEN",
        "RTE_ETH_SPEED_NUM_.*",
        "RTE_ETH_LINK_.*",
        "RTE_ETHER_.*",
        "RTE_ETH_RX_OFFLOAD_.*",
        "RTE_ETH_TX_OFFLOAD_.*",
        "SOCKET_ID_ANY",
        "RTE_SCHED_.*",
        "RTE_FLOW_ITEM_TYPE_.*",
        "RTE_FLOW_ACTION_TYPE_.*",
        "RTE_FLOW_ERROR_TYPE_.*",
    ];

    /// Types named directly by the safe layer (the functions pull in what they need).
    const TYPES: &[&str] = &[
        "rte_mbuf",
        "rte_mempool",
        "rte_eth_conf",
        "rte_eth_dev_info",
        "rte_eth_link",
        "rte_eth_stats",
        "rte_eth_xstat",
        "rte_eth_xstat_name",
        "rte_tel_value_type",
        "rte_eth_rxconf",
        "rte_eth_txconf",
        "rte_ether_addr",
        "rte_sched_.*",
        // rte_flow patterns and actions (receive steering)
        "rte_flow_attr",
        "rte_flow_item",
        "rte_flow_item_type",
        "rte_flow_item_eth",
        "rte_flow_item_ipv4",
        "rte_flow_item_udp",
        "rte_flow_item_raw",
        "rte_flow_action",
        "rte_flow_action_type",
        "rte_flow_action_queue",
        "rte_flow_error",
        "rte_flow_error_type",
    ];

    pub fn generate() {
        // Link flags are emitted after the shim library (below), so that the static shim comes
        // before the DPDK shared libraries it calls on the linker command line.
        let lib = pkg_config::Config::new()
            .atleast_version("22.11")
            .cargo_metadata(false)
            .probe("libdpdk")
            .unwrap_or_else(|e| {
                panic!(
                    "the `dpdk` feature needs libdpdk (>= 22.11) and pkg-config: \
                     install libdpdk-dev (Debian/Ubuntu) or set PKG_CONFIG_PATH. {e}"
                )
            });
        let other_cflags = other_cflags();

        let mut clang_args: Vec<String> = lib
            .include_paths
            .iter()
            .map(|p| format!("-I{}", p.display()))
            .collect();
        for (name, value) in &lib.defines {
            clang_args.push(match value {
                Some(v) => format!("-D{name}={v}"),
                None => format!("-D{name}"),
            });
        }
        clang_args.push("-DALLOW_EXPERIMENTAL_API".into());
        clang_args.extend(other_cflags.iter().cloned());

        let allow = Allowlist {
            functions: FUNCTIONS,
            vars: VARS,
            types: TYPES,
        };
        common::shim(
            "dpdk",
            &allow,
            (&clang_args, &lib.include_paths),
            |b| {
                // The GTP PSC headers (rte_gtp.h, reached through rte_flow/rte_ethdev types) use
                // packed bitfields that break the derived Debug impls. The current allowlist does
                // not reach them; keep them opaque for when it grows.
                b.opaque_type("rte_gtp_psc.*")
            },
            |cc| {
                cc.define("ALLOW_EXPERIMENTAL_API", None);
                for (name, value) in &lib.defines {
                    cc.define(name, value.as_deref());
                }
                for flag in &other_cflags {
                    cc.flag(flag);
                }
            },
        );

        // `-Wl,--as-needed` from the .pc file is left out: rustc already links with it. The
        // PMDs are not linked at all: EAL loads them as plugins from its compiled-in driver
        // directory (Debian: /usr/lib/<triplet>/dpdk/pmds-<abi>), or from `-d <path>`.
        common::emit_link_flags(&[&lib]);
    }

    /// `pkg-config --cflags-only-other libdpdk`: flags the pkg-config crate does not model
    /// (`-include rte_config.h`, `-march=...` that DPDK's headers were configured for).
    fn other_cflags() -> Vec<String> {
        let pkg_config = std::env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".into());
        let out = Command::new(pkg_config)
            .args(["--cflags-only-other", "libdpdk"])
            .output()
            .expect("run pkg-config --cflags-only-other libdpdk");
        assert!(
            out.status.success(),
            "pkg-config --cflags-only-other libdpdk failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("pkg-config output is UTF-8")
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}

#[cfg(feature = "af_xdp")]
mod afxdp {
    use super::common::{self, Allowlist};
    use std::path::PathBuf;

    /// Set-up functions of libxdp's AF_XDP API (non-inline), and the hand-written
    /// `static inline` ring helpers of `wrapper.h` (wrapped out of line by the shim).
    const FUNCTIONS: &[&str] = &[
        "xsk_umem__create",
        "xsk_umem__delete",
        "xsk_umem__fd",
        "xsk_socket__create",
        "xsk_socket__delete",
        "xsk_socket__fd",
        "rtchan_xsk_.*",
        "rtchan_xdp_.*",
    ];

    /// Constants of `<linux/if_xdp.h>`, `<linux/if_link.h>` and `<xdp/xsk.h>`.
    const VARS: &[&str] = &[
        "XDP_FLAGS_.*",
        "XDP_COPY",
        "XDP_ZEROCOPY",
        "XDP_USE_NEED_WAKEUP",
        "XDP_RING_NEED_WAKEUP",
        "XDP_STATISTICS",
        "XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD",
        "XSK_UMEM__DEFAULT_.*",
        "XSK_RING_.*__DEFAULT_NUM_DESCS",
    ];

    /// Types the safe layer names.
    const TYPES: &[&str] = &[
        "xsk_ring_prod",
        "xsk_ring_cons",
        "xsk_umem_config",
        "xsk_socket_config",
        "xdp_desc",
        "xdp_statistics",
    ];

    pub fn generate() {
        // Link flags are emitted after the shim, which calls into libxdp and libbpf.
        let xdp = probe("libxdp", "1.2");
        let bpf = probe("libbpf", "0.8");
        let includes: Vec<PathBuf> = xdp
            .include_paths
            .iter()
            .chain(&bpf.include_paths)
            .cloned()
            .collect();
        let clang_args: Vec<String> = includes
            .iter()
            .map(|p| format!("-I{}", p.display()))
            .collect();

        let allow = Allowlist {
            functions: FUNCTIONS,
            vars: VARS,
            types: TYPES,
        };
        common::shim("afxdp", &allow, (&clang_args, &includes), |b| b, |_| {});

        common::emit_link_flags(&[&xdp, &bpf]);
    }

    fn probe(name: &str, version: &str) -> pkg_config::Library {
        pkg_config::Config::new()
            .atleast_version(version)
            .cargo_metadata(false)
            .probe(name)
            .unwrap_or_else(|e| {
                panic!(
                    "the `af_xdp` feature needs {name} (>= {version}) and pkg-config: install \
                     libxdp-dev and libbpf-dev (Debian 12 / Ubuntu 23.04 and later) or set \
                     PKG_CONFIG_PATH. {e}"
                )
            })
    }
}
