/*
 * rtchan.h: the C API of rtchan's client library (librtchan.so / librtchan.a, built by
 * `cargo build -p rtchan-capi`). C and C++ programs open real-time channels through the
 * rtchand daemon and send and receive on them over shared-memory rings: `rtchan_send` is a copy
 * into the channel's ring and one release store, no system call.
 *
 * Conventions
 * - Every function returning int returns 0 (or a count, or an rtchan_sent value) on success and
 *   a negative errno-style code on failure: -EINVAL bad argument (NULL pointer, bad length,
 *   bad spec field), -EAGAIN would block (buffer full / empty), -EMSGSIZE message longer than
 *   the channel's mmax (send) or than the caller's buffer (receive; the message stays queued),
 *   -EPIPE channel closed, -ECONNRESET daemon gone, -ETIMEDOUT nothing within the timeout,
 *   -EPROTO bad reply from the daemon, and for the daemon's refusals -EINVAL (bad field),
 *   -ENOENT (no such channel), -EACCES (not allowed), -EBUSY (admission refused, or the
 *   channel end is taken), -ENOSPC (a resource limit), -EHOSTUNREACH (peer unreachable),
 *   -EIO (daemon failure). -ENOENT also means the socket does not exist. -EIO is also what a
 *   bug inside the library returns.
 * - rtchan_strerror(code) describes a code; rtchan_last_error_message() gives the detail of
 *   this thread's most recent failed call (e.g. the daemon's refusal naming the field).
 * - No function panics or aborts on bad input; a NULL handle is -EINVAL.
 * - Threads: an rtchan_client may be used from any thread. An rtchan_sender or rtchan_receiver
 *   may be used by one thread at a time (move it between threads freely).
 * - Times are CLOCK_MONOTONIC nanoseconds.
 */
#ifndef RTCHAN_H
#define RTCHAN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A connection to rtchand. Channels keep the connection open after it is freed; when the
 * connection ends (every handle freed, or the process exits) the daemon closes the channels
 * this process opened and frees their reservations. */
typedef struct rtchan_client rtchan_client;
/* The sending end of a channel this process feeds. */
typedef struct rtchan_sender rtchan_sender;
/* The receiving end of a channel, attached to this process. */
typedef struct rtchan_receiver rtchan_receiver;

/* What a full buffer does (rtchan_spec.policy). */
enum rtchan_policy {
    RTCHAN_POLICY_DEFAULT = 0,     /* the daemon's configured default */
    RTCHAN_POLICY_BLOCK = 1,       /* rtchan_send returns -EAGAIN */
    RTCHAN_POLICY_DROP_NEWEST = 2, /* the new message is dropped (counted) */
    RTCHAN_POLICY_DROP_OLDEST = 3  /* the oldest queued message is dropped (counted) */
};

/* A channel to open. rtchan_spec_init fills the defaults. */
typedef struct rtchan_spec {
    uint32_t mmax;        /* largest message, bytes */
    uint32_t bmax;        /* largest burst, messages (the channel's buffer) */
    uint64_t imin_ns;     /* smallest interval between messages */
    uint64_t deadline_ns; /* end-to-end bound D, from rtchan_send to delivery */
    const char *dst;      /* "local" (loopback) or a configured peer; NULL = "local" */
    int32_t policy;       /* enum rtchan_policy */
    int32_t core;         /* core to run on, -1 = placement decides */
    int32_t best_effort;  /* nonzero: best-effort channel (no admission, deadline ignored) */
    uint32_t reserved;    /* 0 */
} rtchan_spec;

/* One message of rtchan_send_many (the layout of struct iovec). */
typedef struct rtchan_iovec {
    const void *base;
    size_t len;
} rtchan_iovec;

/* A received message's metadata. */
typedef struct rtchan_message {
    uint64_t len;          /* bytes (with -EMSGSIZE: the length a buffer needs) */
    uint32_t seq;          /* the channel's message sequence number */
    uint32_t late;         /* 1: delivered after its end-to-end deadline */
    uint64_t submit_ts;    /* the sender's stamp, taken in rtchan_send */
    uint64_t delivered_ts; /* when the receiving core delivered it into the ring */
    uint64_t deadline;     /* absolute end-to-end deadline (0: best-effort) */
} rtchan_message;

/* Delay percentiles, ns. */
typedef struct rtchan_percentiles {
    uint64_t count;
    uint64_t p50;
    uint64_t p99;
    uint64_t p999;
    uint64_t max;
} rtchan_percentiles;

/* A channel's key counters (as `rtchanctl channel stats ID`). has_tx: this host sends on it;
 * has_rx: this host receives it (both for a loopback channel). Absent sides are zero. */
typedef struct rtchan_channel_stats {
    uint32_t id;
    uint32_t has_tx;
    uint32_t has_rx;
    uint32_t reserved;
    double uptime_s;
    uint64_t tx_submitted;       /* messages accepted */
    uint64_t tx_sent;            /* messages whose last packet left */
    uint64_t tx_packets;
    uint64_t tx_bytes;
    uint64_t tx_would_block;     /* submits refused with a full buffer */
    uint64_t tx_dropped;         /* dropped by the policy or on close */
    uint64_t tx_late_packets;    /* packets released after their link deadline */
    uint64_t tx_budget_overruns; /* handler runs over their cycle budget */
    uint64_t tx_invalid;         /* descriptors the client wrote that failed validation */
    rtchan_percentiles tx_delay; /* submit to last packet released */
    uint64_t rx_delivered;
    uint64_t rx_bytes;
    uint64_t rx_deadline_misses; /* delivered after submit + D */
    uint64_t rx_lost;            /* sequence gaps */
    uint64_t rx_duplicates;
    uint64_t rx_reordered;
    rtchan_percentiles rx_latency; /* submit to delivery */
} rtchan_channel_stats;

/* What rtchan_send did (its non-negative results). */
enum rtchan_sent {
    RTCHAN_SENT_QUEUED = 0,
    RTCHAN_SENT_DROPPED_NEWEST = 1,        /* full drop-newest channel: this message dropped */
    RTCHAN_SENT_QUEUED_DROPPED_OLDEST = 2  /* queued; the oldest queued one dropped */
};

/* Fills *spec: the given numbers, dst "local", the daemon's default policy, core -1, not
 * best-effort. Returns 0, or -EINVAL for a NULL spec. */
int rtchan_spec_init(rtchan_spec *spec, uint32_t mmax, uint64_t imin_ns, uint32_t bmax,
                     uint64_t deadline_ns);

/* Connects to the daemon's control socket (NULL: $RTCHAN_SOCKET, else
 * /run/rtchan/rtchand.sock). On success *out holds the client. */
int rtchan_connect(const char *socket_path, rtchan_client **out);

/* Opens a channel fed by this process (admission on both hosts, as `rtchanctl channel open`). */
int rtchan_open(rtchan_client *client, const rtchan_spec *spec, rtchan_sender **out);
/* Attaches to a client-fed channel that has no sender attached (e.g. after a daemon restart). */
int rtchan_attach_sender(rtchan_client *client, uint32_t channel_id, rtchan_sender **out);
/* Attaches to the receiving end of channel channel_id on this host (loopback or incoming). */
int rtchan_attach_receiver(rtchan_client *client, uint32_t channel_id, rtchan_receiver **out);

/* The channel's id and mmax, also after close (-EINVAL for a NULL handle). */
int64_t rtchan_sender_id(const rtchan_sender *tx);
int64_t rtchan_sender_mmax(const rtchan_sender *tx);
int64_t rtchan_receiver_id(const rtchan_receiver *rx);
int64_t rtchan_receiver_mmax(const rtchan_receiver *rx);

/* Copies msg into the channel's ring, stamps it and publishes it: no system call. The
 * message's delay is measured from this stamp. Returns an enum rtchan_sent value, -EAGAIN (full,
 * block policy), -EMSGSIZE (len > mmax: nothing sent, nothing truncated), -EPIPE (closed),
 * -ECONNRESET (daemon gone), -EINVAL (NULL tx, or NULL msg with len > 0). */
int rtchan_send(rtchan_sender *tx, const void *msg, size_t len);
/* rtchan_send, retrying a full buffer until timeout_ns; then -EAGAIN. */
int rtchan_send_timeout(rtchan_sender *tx, const void *msg, size_t len, uint64_t timeout_ns);
/* Sends count messages in order with one publish for the batch. Returns how many were taken
 * (queued, or dropped by a drop-newest channel), stopping at the first that cannot go; a
 * negative code only when the first fails (nothing taken). Every entry is checked before
 * anything is sent: -EINVAL for NULL msgs with count > 0, a NULL base with len > 0, or
 * count > INT32_MAX. */
int rtchan_send_many(rtchan_sender *tx, const rtchan_iovec *msgs, size_t count);

/* Non-blocking: copies the next message into buf (cap bytes) and fills *msg. -EAGAIN when
 * empty; -EMSGSIZE when it is longer than cap (msg->len says how long; it stays queued). */
int rtchan_try_recv(rtchan_receiver *rx, void *buf, size_t cap, rtchan_message *msg);
/* Like rtchan_try_recv, waiting up to timeout_ns (busy-polls briefly, then sleeps on the
 * ring's futex word, which the daemon wakes): -ETIMEDOUT when nothing came. */
int rtchan_recv_timeout(rtchan_receiver *rx, void *buf, size_t cap, uint64_t timeout_ns,
                        rtchan_message *msg);

/* Statistics of channel channel_id, or of a sender's or receiver's channel. */
int rtchan_stats(rtchan_client *client, uint32_t channel_id, rtchan_channel_stats *out);
int rtchan_sender_stats(const rtchan_sender *tx, rtchan_channel_stats *out);
int rtchan_receiver_stats(const rtchan_receiver *rx, rtchan_channel_stats *out);

/* Closes a channel this host sends on, by id. */
int rtchan_close_channel(rtchan_client *client, uint32_t channel_id);
/* Closes the sender's channel (queued messages drain per the daemon's close mode). The handle
 * stays valid until freed; calls on it then return -EPIPE. -EPIPE if already closed. */
int rtchan_close_sender(rtchan_sender *tx);
/* Detaches the receiver (the daemon's own sink drains the channel again). As above. */
int rtchan_close_receiver(rtchan_receiver *rx);

/* Frees a handle (NULL is a no-op). Freeing an open sender closes its channel; freeing an
 * attached receiver detaches it. */
void rtchan_free_client(rtchan_client *client);
void rtchan_free_sender(rtchan_sender *tx);
void rtchan_free_receiver(rtchan_receiver *rx);

/* A static sentence for a code returned by this library (negative or positive errno). */
const char *rtchan_strerror(int code);
/* The detail of this thread's most recent failed call ("" if none): a NUL-terminated string,
 * valid until the next rtchan call on this thread. */
const char *rtchan_last_error_message(void);

#ifdef __cplusplus
}
#endif

#endif /* RTCHAN_H */
