/*
 * sender.c: opens a real-time channel through rtchand and sends COUNT messages, one every
 * PERIOD, printing each message sent (its length and bytes in hex) and the channel's
 * statistics at the end.
 *
 *   sender [-s SOCKET] [-n COUNT] [-p PERIOD_US] [-m MMAX] [-b BMAX] [-d DEADLINE_US]
 *          [-t DST] [-w] [-l LINGER_MS] [-q]
 *
 * -w waits for a line on stdin after opening (start a receiver on the printed channel id,
 * then press Enter), and for another line (or the end of input) before closing. Message i is
 * 1 + (i * 7) % MMAX bytes long, byte j being (i * 131 + j * 7 + 1) mod 256.
 * Build: see examples/c/Makefile.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "rtchan.h"

static void die(const char *what, int rc) {
    fprintf(stderr, "sender: %s: %s (%d): %s\n", what, rtchan_strerror(rc), rc,
            rtchan_last_error_message());
    exit(1);
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void sleep_until(uint64_t t) {
    struct timespec ts = {.tv_sec = (time_t)(t / 1000000000u), .tv_nsec = (long)(t % 1000000000u)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static unsigned long arg(const char *s, const char *name) {
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || end == s) {
        fprintf(stderr, "sender: %s: not a number: %s\n", name, s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv) {
    const char *socket = NULL, *dst = NULL;
    unsigned long count = 100, period_us = 1000, mmax = 64, bmax = 4, deadline_us = 10000;
    unsigned long linger_ms = 100;
    int wait = 0, quiet = 0, opt;
    while ((opt = getopt(argc, argv, "s:n:p:m:b:d:t:wl:q")) != -1) {
        switch (opt) {
        case 's': socket = optarg; break;
        case 'n': count = arg(optarg, "-n"); break;
        case 'p': period_us = arg(optarg, "-p"); break;
        case 'm': mmax = arg(optarg, "-m"); break;
        case 'b': bmax = arg(optarg, "-b"); break;
        case 'd': deadline_us = arg(optarg, "-d"); break;
        case 't': dst = optarg; break;
        case 'w': wait = 1; break;
        case 'l': linger_ms = arg(optarg, "-l"); break;
        case 'q': quiet = 1; break;
        default:
            fprintf(stderr, "usage: sender [-s SOCKET] [-n COUNT] [-p PERIOD_US] [-m MMAX] "
                            "[-b BMAX] [-d DEADLINE_US] [-t DST] [-w] [-l LINGER_MS] [-q]\n");
            return 2;
        }
    }
    if (mmax == 0 || mmax > 65536) {
        fprintf(stderr, "sender: -m: 1 to 65536 bytes\n");
        return 2;
    }

    rtchan_client *client;
    int rc = rtchan_connect(socket, &client);
    if (rc < 0) die("connect", rc);
    rtchan_spec spec;
    rtchan_spec_init(&spec, (uint32_t)mmax, period_us * 1000u, (uint32_t)bmax, deadline_us * 1000u);
    spec.policy = RTCHAN_POLICY_BLOCK;
    if (dst) spec.dst = dst;
    rtchan_sender *tx;
    rc = rtchan_open(client, &spec, &tx);
    if (rc < 0) die("open", rc);
    printf("channel %" PRId64 " mmax %" PRId64 "\n", rtchan_sender_id(tx), rtchan_sender_mmax(tx));
    fflush(stdout);
    if (wait) {
        char line[64];
        if (!fgets(line, sizeof line, stdin)) {
            fprintf(stderr, "sender: stdin closed before the start line\n");
            return 1;
        }
    }

    unsigned char msg[65536];
    uint64_t *call_ns = calloc(count ? count : 1, sizeof *call_ns);
    if (!call_ns) {
        fprintf(stderr, "sender: out of memory\n");
        return 1;
    }
    uint64_t next = now_ns();
    for (unsigned long i = 0; i < count; i++) {
        size_t len = 1 + (i * 7) % mmax;
        for (size_t j = 0; j < len; j++) msg[j] = (unsigned char)(i * 131 + j * 7 + 1);
        sleep_until(next);
        /* The period is at least the channel's imin: a full buffer is a brief catch-up. */
        uint64_t t0 = now_ns();
        rc = rtchan_send_timeout(tx, msg, len, 100u * 1000000u);
        call_ns[i] = now_ns() - t0;
        if (rc < 0) die("send", rc);
        if (!quiet) {
            printf("sent %lu %zu ", i, len);
            for (size_t j = 0; j < len; j++) printf("%02x", msg[j]);
            printf("\n");
        }
        /* Never sooner than a period after this send (the stamp is taken inside it): a send
         * delayed by preemption is not followed by a catch-up burst, which would exceed imin
         * and make every later message wait for its logical arrival time. */
        uint64_t t = now_ns() + period_us * 1000u;
        next += period_us * 1000u;
        if (next < t) next = t;
    }
    /* What one rtchan_send call costs this process (a copy into the ring and a store). */
    qsort(call_ns, count, sizeof *call_ns, cmp_u64);
    printf("send_call_ns count %lu p50 %" PRIu64 " p99 %" PRIu64 " max %" PRIu64 "\n", count,
           count ? call_ns[count / 2] : 0, count ? call_ns[count - 1 - count / 100] : 0,
           count ? call_ns[count - 1] : 0);
    free(call_ns);
    fflush(stdout);

    /* Let the last messages reach the receiver before the channel closes. */
    sleep_until(now_ns() + linger_ms * 1000000u);
    if (wait) {
        char line[64];
        (void)!fgets(line, sizeof line, stdin);
    }
    rtchan_channel_stats st;
    rc = rtchan_sender_stats(tx, &st);
    if (rc < 0) die("stats", rc);
    printf("stats submitted %" PRIu64 " sent %" PRIu64 " dropped %" PRIu64 " would_block %" PRIu64
           " delay_p50_ns %" PRIu64 " delay_p99_ns %" PRIu64 " delay_max_ns %" PRIu64 "\n",
           st.tx_submitted, st.tx_sent, st.tx_dropped, st.tx_would_block, st.tx_delay.p50,
           st.tx_delay.p99, st.tx_delay.max);
    rc = rtchan_close_sender(tx);
    if (rc < 0) die("close", rc);
    rtchan_free_sender(tx);
    rtchan_free_client(client);
    printf("done %lu\n", count);
    return 0;
}
