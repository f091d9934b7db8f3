/*
 * Input to bindgen (see build.rs): the DPDK headers rtchan binds, plus a few tiny hand-written
 * `static inline` helpers for things bindgen cannot express (thread-local `rte_errno`).
 *
 * Every `static inline` function that the allowlist in build.rs selects (these helpers
 * included) gets an out-of-line `<name>__extern` wrapper in the C file bindgen writes with
 * `wrap_static_fns`; build.rs compiles that file with cc.
 */
#ifndef RTCHAN_DPDK_WRAPPER_H
#define RTCHAN_DPDK_WRAPPER_H

/* `pkg-config --cflags libdpdk` says `-include rte_config.h`; include it here so the header
 * works whatever flags the consumer passes. */
#include <rte_config.h>

#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_dev.h>
#include <rte_ethdev.h>
#include <rte_flow.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_sched.h>
#include <rte_telemetry.h>

/* `rte_errno` is a per-lcore (thread-local) variable: Rust cannot bind `__thread` data. */
static inline int rtchan_rte_errno(void)
{
	return rte_errno;
}

static inline void rtchan_rte_errno_set(int value)
{
	rte_errno = value;
}

#endif /* RTCHAN_DPDK_WRAPPER_H */
