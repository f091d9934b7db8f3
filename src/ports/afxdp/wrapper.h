/*
 * Input to bindgen (see build.rs, feature `af_xdp`): libxdp's AF_XDP API, plus `static inline`
 * forwarders for its ring helpers.
 *
 * libxdp's ring helpers (`xsk_ring_prod__reserve`, `xsk_ring_cons__peek`, ...) are declared
 * `XDP_ALWAYS_INLINE`: `static inline` in gnu89 mode, C99 `inline` otherwise (libxdp >= 1.2
 * also exports out-of-line copies, older xsk.h headers do not). The `rtchan_xsk_*` forwarders
 * below are always `static inline`, so bindgen's `wrap_static_fns` writes an out-of-line
 * `<name>__extern` for each, build.rs compiles those with cc (-O2), and the libxdp helper is
 * inlined into it whatever the header version: one plain call per ring operation from Rust.
 */
#ifndef RTCHAN_AFXDP_WRAPPER_H
#define RTCHAN_AFXDP_WRAPPER_H

#include <stdarg.h>
#include <linux/if_link.h>
#include <linux/if_xdp.h>
#include <bpf/libbpf.h>
#include <xdp/libxdp.h>
#include <xdp/xsk.h>

/* Producer rings: fill (user space gives the kernel empty frames) and TX. */

static inline __u32 rtchan_xsk_prod_nb_free(struct xsk_ring_prod *r, __u32 nb)
{
	return xsk_prod_nb_free(r, nb);
}

static inline __u32 rtchan_xsk_prod_reserve(struct xsk_ring_prod *r, __u32 nb, __u32 *idx)
{
	return xsk_ring_prod__reserve(r, nb, idx);
}

static inline void rtchan_xsk_prod_submit(struct xsk_ring_prod *r, __u32 nb)
{
	xsk_ring_prod__submit(r, nb);
}

static inline int rtchan_xsk_prod_needs_wakeup(const struct xsk_ring_prod *r)
{
	return xsk_ring_prod__needs_wakeup(r);
}

static inline __u64 *rtchan_xsk_prod_fill_addr(struct xsk_ring_prod *fill, __u32 idx)
{
	return xsk_ring_prod__fill_addr(fill, idx);
}

static inline struct xdp_desc *rtchan_xsk_prod_tx_desc(struct xsk_ring_prod *tx, __u32 idx)
{
	return xsk_ring_prod__tx_desc(tx, idx);
}

/* Consumer rings: RX and completion (the kernel gives back frames it has sent). */

static inline __u32 rtchan_xsk_cons_peek(struct xsk_ring_cons *r, __u32 nb, __u32 *idx)
{
	return xsk_ring_cons__peek(r, nb, idx);
}

static inline void rtchan_xsk_cons_release(struct xsk_ring_cons *r, __u32 nb)
{
	xsk_ring_cons__release(r, nb);
}

static inline const struct xdp_desc *rtchan_xsk_cons_rx_desc(const struct xsk_ring_cons *rx,
							     __u32 idx)
{
	return xsk_ring_cons__rx_desc(rx, idx);
}

static inline const __u64 *rtchan_xsk_cons_comp_addr(const struct xsk_ring_cons *comp,
						     __u32 idx)
{
	return xsk_ring_cons__comp_addr(comp, idx);
}

/* Logging: libxdp and libbpf print to stderr by default (for example "No bpffs found at
 * /sys/fs/bpf ... Falling back to loading single prog without dispatcher"). */

static int rtchan_libxdp_print_nothing(enum libxdp_print_level level, const char *fmt,
				       va_list args) __attribute__((unused));
static int rtchan_libxdp_print_nothing(enum libxdp_print_level level, const char *fmt,
				       va_list args)
{
	(void)level;
	(void)fmt;
	(void)args;
	return 0;
}

static int rtchan_libbpf_print_nothing(enum libbpf_print_level level, const char *fmt,
				       va_list args) __attribute__((unused));
static int rtchan_libbpf_print_nothing(enum libbpf_print_level level, const char *fmt,
				       va_list args)
{
	(void)level;
	(void)fmt;
	(void)args;
	return 0;
}

/* Silences (quiet != 0) or restores (quiet == 0) the libraries' default stderr printers. */
static inline void rtchan_xdp_set_quiet(int quiet)
{
	static libxdp_print_fn_t xdp_default;
	static libbpf_print_fn_t bpf_default;
	static int saved;

	if (quiet) {
		libxdp_print_fn_t x = libxdp_set_print(rtchan_libxdp_print_nothing);
		libbpf_print_fn_t b = libbpf_set_print(rtchan_libbpf_print_nothing);
		if (!saved) {
			xdp_default = x;
			bpf_default = b;
			saved = 1;
		}
	} else if (saved) {
		libxdp_set_print(xdp_default);
		libbpf_set_print(bpf_default);
	}
}

#endif /* RTCHAN_AFXDP_WRAPPER_H */
