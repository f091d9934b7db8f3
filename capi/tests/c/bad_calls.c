/*
 * bad_calls.c: drives librtchan through bad and edge-case calls against a running rtchand and
 * prints what each returned, one line per call:
 *
 *   NAME RC|rtchan_strerror(RC)|rtchan_last_error_message()
 *
 * It judges nothing itself: tests/c_client.rs holds the expected codes and texts.
 *
 *   bad_calls SOCKET calls   argument checks, refusals, closed channels; prints "B ID" and
 *                            waits for a line on stdin before sending on channel B again
 *                            (the test closes B with rtchanctl in between)
 *   bad_calls SOCKET recv    receive-side edge cases on a loopback channel
 *   bad_calls SOCKET gone    prints "ready", waits for a line (the test kills the daemon),
 *                            then sends until the first failure and tries control calls
 *   bad_calls SOCKET reattach  prints "ready ID", waits for a line (the test restarts the
 *                            daemon), then connects again and attaches to channel ID's sender
 */
#define _POSIX_C_SOURCE 200809L
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rtchan.h"

static void report(const char *name, int64_t rc) {
    printf("%s %" PRId64 "|%s|%s\n", name, rc, rtchan_strerror((int)rc),
           rc < 0 ? rtchan_last_error_message() : "");
    fflush(stdout);
}

static void need(const char *name, int rc) {
    if (rc < 0) {
        report(name, rc);
        fprintf(stderr, "bad_calls: %s failed, cannot go on\n", name);
        exit(1);
    }
}

static void wait_line(void) {
    char line[64];
    (void)!fgets(line, sizeof line, stdin);
}

static void nap_ms(long ms) {
    struct timespec t = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static rtchan_spec spec(uint32_t mmax) {
    rtchan_spec s;
    rtchan_spec_init(&s, mmax, 1000000u, 4, 20000000u);
    s.policy = RTCHAN_POLICY_BLOCK;
    return s;
}

static int calls(rtchan_client *c) {
    unsigned char m[64];
    memset(m, 0xab, sizeof m);
    rtchan_sender *tx = NULL;

    rtchan_spec s = spec(16);
    s.bmax = 0;
    report("open_bmax_0", rtchan_open(c, &s, &tx));
    report("open_bmax_0_out_is_null", tx == NULL ? 0 : -1);
    s = spec(60000);
    s.imin_ns = 1000; /* 60 kB every microsecond: more than any link */
    s.deadline_ns = 1000000000u;
    report("open_overload", rtchan_open(c, &s, &tx));
    s = spec(16);
    s.policy = 9;
    report("open_policy_9", rtchan_open(c, &s, &tx));
    s = spec(16);
    s.dst = "no-such-peer";
    report("open_unknown_dst", rtchan_open(c, &s, &tx));

    s = spec(16);
    need("open", rtchan_open(c, &s, &tx));
    report("sender_mmax", rtchan_sender_mmax(tx));
    report("send_null_msg", rtchan_send(tx, NULL, 5));
    report("send_17_of_16", rtchan_send(tx, m, 17));
    report("send_16", rtchan_send(tx, m, 16));
    rtchan_iovec v[3] = {{m, 8}, {m, 17}, {m, 4}};
    report("send_many_stops_at_too_long", rtchan_send_many(tx, v, 3));
    report("send_many_first_too_long", rtchan_send_many(tx, &v[1], 1));
    rtchan_iovec nul[2] = {{m, 8}, {NULL, 3}};
    report("send_many_null_base", rtchan_send_many(tx, nul, 2));
    report("send_many_zero", rtchan_send_many(tx, v, 0));

    rtchan_receiver *rx = NULL;
    report("attach_receiver_99999", rtchan_attach_receiver(c, 99999, &rx));
    rtchan_sender *tx2 = NULL;
    report("attach_sender_99999", rtchan_attach_sender(c, 99999, &tx2));
    rtchan_channel_stats st;
    uint32_t id = (uint32_t)rtchan_sender_id(tx);
    /* The core counts a submit when it takes the message from the ring: wait for both. */
    for (int i = 0; i < 2000; i++) {
        if (rtchan_stats(c, id, &st) < 0 || st.tx_submitted >= 2) break;
        nap_ms(1);
    }
    report("stats", rtchan_stats(c, id, &st));
    printf("stats_tx has_tx %" PRIu32 " submitted %" PRIu64 "\n", st.has_tx, st.tx_submitted);
    report("stats_null_out", rtchan_stats(c, id, NULL));
    report("stats_99999", rtchan_stats(c, 99999, &st));
    report("close_channel_99999", rtchan_close_channel(c, 99999));

    report("close_sender", rtchan_close_sender(tx));
    report("send_after_close", rtchan_send(tx, m, 4));
    report("close_sender_again", rtchan_close_sender(tx));
    report("sender_stats_after_close", rtchan_sender_stats(tx, &st));
    report("sender_id_after_close", rtchan_sender_id(tx) == id ? 0 : -1);
    report("stats_of_closed", rtchan_stats(c, id, &st));
    rtchan_free_sender(tx);

    /* Channel B: closed by the daemon (rtchanctl channel close) while this process holds it. */
    rtchan_sender *b;
    s = spec(16);
    need("open_b", rtchan_open(c, &s, &b));
    printf("B %" PRId64 "\n", rtchan_sender_id(b));
    fflush(stdout);
    wait_line();
    /* The daemon's close reaches the ring asynchronously: send until the first failure. */
    int rc = 0;
    for (int i = 0; i < 2000 && rc >= 0; i++) {
        rc = rtchan_send(b, m, 4);
        nap_ms(1);
    }
    report("send_after_daemon_close", rc);
    rtchan_free_sender(b);
    return 0;
}

static int recv_calls(rtchan_client *c) {
    unsigned char m[10], buf[64];
    for (int i = 0; i < 10; i++) m[i] = (unsigned char)(i + 1);
    rtchan_sender *tx;
    rtchan_spec s = spec(16);
    need("open", rtchan_open(c, &s, &tx));
    rtchan_receiver *rx;
    need("attach_receiver", rtchan_attach_receiver(c, (uint32_t)rtchan_sender_id(tx), &rx));
    report("receiver_mmax", rtchan_receiver_mmax(rx));
    rtchan_message msg;
    report("try_recv_empty", rtchan_try_recv(rx, buf, sizeof buf, &msg));
    report("recv_timeout_empty_20ms", rtchan_recv_timeout(rx, buf, sizeof buf, 20000000u, &msg));
    report("recv_null_msg", rtchan_recv_timeout(rx, buf, sizeof buf, 0, NULL));
    report("recv_null_buf", rtchan_recv_timeout(rx, NULL, 8, 0, &msg));
    need("send", rtchan_send(tx, m, sizeof m));
    report("recv_cap_4", rtchan_recv_timeout(rx, buf, 4, 2000000000u, &msg));
    printf("recv_cap_4_len %" PRIu64 "\n", msg.len);
    report("recv_cap_64", rtchan_recv_timeout(rx, buf, sizeof buf, 2000000000u, &msg));
    printf("recv_cap_64_msg len %" PRIu64 " equal %d\n", msg.len,
           msg.len == sizeof m && memcmp(buf, m, sizeof m) == 0);
    report("close_receiver", rtchan_close_receiver(rx));
    report("try_recv_after_close", rtchan_try_recv(rx, buf, sizeof buf, &msg));
    rtchan_free_receiver(rx);
    rtchan_free_sender(tx);
    return 0;
}

static int gone(rtchan_client *c, const char *socket, int with_recv) {
    unsigned char m[8] = {0};
    rtchan_sender *tx;
    rtchan_spec s = spec(16);
    need("open", rtchan_open(c, &s, &tx));
    rtchan_receiver *rx = NULL;
    if (with_recv)
        need("attach_receiver", rtchan_attach_receiver(c, (uint32_t)rtchan_sender_id(tx), &rx));
    printf("ready\n");
    fflush(stdout);
    wait_line();
    int rc = 0;
    for (int i = 0; i < 5000 && rc >= 0; i++) {
        rc = rtchan_send(tx, m, sizeof m);
        nap_ms(1);
    }
    report("send_after_kill", rc);
    rtchan_channel_stats st;
    report("stats_after_kill", rtchan_sender_stats(tx, &st));
    if (rx) {
        unsigned char buf[16];
        rtchan_message msg;
        /* Drain what was delivered before the kill; then the receiver must see the daemon gone. */
        do {
            rc = rtchan_recv_timeout(rx, buf, sizeof buf, 1000000000u, &msg);
        } while (rc == 0);
        report("recv_after_kill", rc);
        rtchan_free_receiver(rx);
    }
    report("close_after_kill", rtchan_close_sender(tx));
    rtchan_free_sender(tx);
    rtchan_client *c2 = NULL;
    report("connect_after_kill", rtchan_connect(socket, &c2));
    rtchan_free_client(c2);
    return 0;
}

static int reattach(rtchan_client *c, const char *socket) {
    unsigned char m[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    rtchan_sender *tx;
    rtchan_spec s = spec(16);
    need("open", rtchan_open(c, &s, &tx));
    uint32_t id = (uint32_t)rtchan_sender_id(tx);
    printf("ready %" PRIu32 "\n", id);
    fflush(stdout);
    wait_line();
    report("send_after_restart_old_handle", rtchan_send(tx, m, sizeof m));
    rtchan_free_sender(tx);
    rtchan_client *c2 = NULL;
    need("connect_after_restart", rtchan_connect(socket, &c2));
    rtchan_sender *tx2 = NULL;
    report("attach_sender_after_restart", rtchan_attach_sender(c2, id, &tx2));
    if (tx2) {
        report("attached_id", rtchan_sender_id(tx2) == id ? 0 : -1);
        report("send_after_reattach", rtchan_send(tx2, m, sizeof m));
        rtchan_sender *tx3 = NULL;
        report("attach_sender_twice", rtchan_attach_sender(c2, id, &tx3));
        rtchan_free_sender(tx3);
    }
    rtchan_free_sender(tx2);
    rtchan_free_client(c2);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: bad_calls SOCKET calls|recv|gone|gone-recv|reattach\n");
        return 2;
    }
    report("strerror_0", 0);
    rtchan_client *c = NULL;
    report("connect_null_out", rtchan_connect(argv[1], NULL));
    need("connect", rtchan_connect(argv[1], &c));
    int r;
    if (strcmp(argv[2], "calls") == 0)
        r = calls(c);
    else if (strcmp(argv[2], "recv") == 0)
        r = recv_calls(c);
    else if (strcmp(argv[2], "gone") == 0)
        r = gone(c, argv[1], 0);
    else if (strcmp(argv[2], "gone-recv") == 0)
        r = gone(c, argv[1], 1);
    else if (strcmp(argv[2], "reattach") == 0)
        r = reattach(c, argv[1]);
    else
        r = 2;
    rtchan_free_client(c);
    printf("end\n");
    return r;
}
