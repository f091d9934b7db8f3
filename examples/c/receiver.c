/*
 * receiver.c: attaches to the receiving end of a channel through rtchand, receives COUNT
 * messages and prints each one (sequence number, length, latency, bytes in hex), every
 * deadline miss, and the latency percentiles at the end.
 *
 *   receiver -c CHANNEL [-s SOCKET] [-n COUNT] [-t TIMEOUT_MS] [-q]
 *
 * Latency is submit to delivery: from the sender's stamp in rtchan_send to the receiving
 * core's delivery into this process's ring (both CLOCK_MONOTONIC on one host). A miss is a
 * message delivered after its end-to-end deadline. Exits 0 once COUNT messages arrived, 1 if
 * the channel closed or TIMEOUT_MS passed without a message first.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rtchan.h"

static void die(const char *what, int rc) {
    fprintf(stderr, "receiver: %s: %s (%d): %s\n", what, rtchan_strerror(rc), rc,
            rtchan_last_error_message());
    exit(1);
}

static unsigned long arg(const char *s, const char *name) {
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || end == s) {
        fprintf(stderr, "receiver: %s: not a number: %s\n", name, s);
        exit(2);
    }
    return v;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* The p-th percentile (0 < p <= 100) of n sorted values: the smallest value at or above which
 * p percent of them lie. */
static uint64_t pct(const uint64_t *v, size_t n, double p) {
    if (n == 0) return 0;
    size_t k = (size_t)((p / 100.0) * (double)n + 0.999999);
    if (k < 1) k = 1;
    if (k > n) k = n;
    return v[k - 1];
}

int main(int argc, char **argv) {
    const char *socket = NULL;
    unsigned long channel = 0, count = 100, timeout_ms = 2000;
    int have_channel = 0, quiet = 0, opt;
    while ((opt = getopt(argc, argv, "c:s:n:t:q")) != -1) {
        switch (opt) {
        case 'c': channel = arg(optarg, "-c"); have_channel = 1; break;
        case 's': socket = optarg; break;
        case 'n': count = arg(optarg, "-n"); break;
        case 't': timeout_ms = arg(optarg, "-t"); break;
        case 'q': quiet = 1; break;
        default:
            fprintf(stderr,
                    "usage: receiver -c CHANNEL [-s SOCKET] [-n COUNT] [-t TIMEOUT_MS] [-q]\n");
            return 2;
        }
    }
    if (!have_channel || channel > UINT32_MAX || count == 0) {
        fprintf(stderr, "receiver: -c CHANNEL is required; -n at least 1\n");
        return 2;
    }

    rtchan_client *client;
    int rc = rtchan_connect(socket, &client);
    if (rc < 0) die("connect", rc);
    rtchan_receiver *rx;
    rc = rtchan_attach_receiver(client, (uint32_t)channel, &rx);
    if (rc < 0) die("attach", rc);
    int64_t mmax = rtchan_receiver_mmax(rx);
    printf("attached %lu mmax %" PRId64 "\n", channel, mmax);
    fflush(stdout);

    uint64_t *lat = calloc(count, sizeof *lat);
    unsigned char *buf = malloc((size_t)mmax);
    if (!lat || !buf) {
        fprintf(stderr, "receiver: out of memory\n");
        return 1;
    }
    size_t got = 0, misses = 0;
    int status = 0;
    while (got < count) {
        rtchan_message m;
        rc = rtchan_recv_timeout(rx, buf, (size_t)mmax, timeout_ms * 1000000u, &m);
        if (rc < 0) {
            fprintf(stderr, "receiver: after %zu of %lu messages: %s (%d): %s\n", got, count,
                    rtchan_strerror(rc), rc, rtchan_last_error_message());
            status = 1;
            break;
        }
        lat[got++] = m.delivered_ts - m.submit_ts;
        if (!quiet) {
            printf("recv %" PRIu32 " %" PRIu64 " %" PRIu64 " ", m.seq, m.len,
                   m.delivered_ts - m.submit_ts);
            for (uint64_t j = 0; j < m.len; j++) printf("%02x", buf[j]);
            printf("\n");
        }
        if (m.late || (m.deadline && m.delivered_ts > m.deadline)) {
            misses++;
            printf("miss %" PRIu32 " submit %" PRIu64 " deadline %" PRIu64 " delivered %" PRIu64
                   "\n", m.seq, m.submit_ts, m.deadline, m.delivered_ts);
        }
    }

    qsort(lat, got, sizeof *lat, cmp_u64);
    printf("latency_ns count %zu p50 %" PRIu64 " p99 %" PRIu64 " p999 %" PRIu64 " max %" PRIu64
           "\n", got, pct(lat, got, 50), pct(lat, got, 99), pct(lat, got, 99.9),
           got ? lat[got - 1] : 0);
    printf("received %zu misses %zu\n", got, misses);
    rtchan_channel_stats st;
    rc = rtchan_receiver_stats(rx, &st);
    if (rc == 0)
        printf("stats delivered %" PRIu64 " deadline_misses %" PRIu64 " lost %" PRIu64 "\n",
               st.rx_delivered, st.rx_deadline_misses, st.rx_lost);
    else /* e.g. the sender closed the channel already */
        printf("stats unavailable: %s\n", rtchan_last_error_message());
    rtchan_free_receiver(rx);
    rtchan_free_client(client);
    free(lat);
    free(buf);
    return status;
}
