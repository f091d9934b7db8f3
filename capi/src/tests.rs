//! The FFI layer without a daemon: every entry point with NULL and bad arguments, spec checks,
//! connect failures, and the header's struct layouts against the Rust ones (compiled with `cc`).

use super::*;
use std::mem::{offset_of, size_of};
use std::ptr::{null, null_mut};

fn detail() -> String {
    // SAFETY: a NUL-terminated string valid until the next call on this thread; copied at once.
    unsafe { CStr::from_ptr(rtchan_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

const EINVAL: c_int = -libc::EINVAL;

fn assert_invalid(r: c_int, func: &str, arg: &str) {
    assert_eq!(r, EINVAL, "{func}: {}", detail());
    let d = detail();
    assert!(
        d.starts_with(func) && d.contains(arg),
        "{func}: detail {d:?} should name {arg}"
    );
}

/// A sender handle whose channel is already closed (no daemon needed).
fn closed_sender(mmax: u32) -> rtchan_sender {
    rtchan_sender {
        inner: None,
        id: 7,
        mmax,
    }
}

#[test]
fn null_handles_and_out_pointers_are_einval_naming_the_argument() {
    let mut spec = rtchan_spec {
        mmax: 0,
        bmax: 0,
        imin_ns: 0,
        deadline_ns: 0,
        dst: null(),
        policy: 0,
        core: -1,
        best_effort: 0,
        reserved: 0,
    };
    let mut tx: *mut rtchan_sender = null_mut();
    let mut rx: *mut rtchan_receiver = null_mut();
    let mut st = rtchan_channel_stats::default();
    let mut m = rtchan_message::default();
    let mut buf = [0u8; 8];
    // SAFETY: every pointer passed is NULL or valid for the call (the functions under test
    // must refuse the NULL ones).
    unsafe {
        assert_invalid(
            rtchan_spec_init(null_mut(), 1, 1, 1, 1),
            "rtchan_spec_init",
            "spec",
        );
        assert_invalid(rtchan_connect(null(), null_mut()), "rtchan_connect", "out");
        assert_invalid(
            rtchan_open(null_mut(), &spec, &mut tx),
            "rtchan_open",
            "client",
        );
        assert_invalid(
            rtchan_open(null_mut(), &spec, null_mut()),
            "rtchan_open",
            "out",
        );
        assert_invalid(
            rtchan_attach_sender(null_mut(), 1, &mut tx),
            "rtchan_attach_sender",
            "client",
        );
        assert_invalid(
            rtchan_attach_receiver(null_mut(), 1, &mut rx),
            "rtchan_attach_receiver",
            "client",
        );
        assert_eq!(rtchan_sender_id(null()), i64::from(EINVAL));
        assert_eq!(rtchan_sender_mmax(null()), i64::from(EINVAL));
        assert_eq!(rtchan_receiver_id(null()), i64::from(EINVAL));
        assert_eq!(rtchan_receiver_mmax(null()), i64::from(EINVAL));
        assert_invalid(
            rtchan_send(null_mut(), buf.as_ptr().cast(), 1),
            "rtchan_send",
            "tx",
        );
        assert_invalid(
            rtchan_send_timeout(null_mut(), buf.as_ptr().cast(), 1, 0),
            "rtchan_send_timeout",
            "tx",
        );
        assert_invalid(
            rtchan_send_many(null_mut(), null(), 0),
            "rtchan_send_many",
            "tx",
        );
        assert_invalid(
            rtchan_try_recv(null_mut(), buf.as_mut_ptr().cast(), 8, &mut m),
            "rtchan_try_recv",
            "rx",
        );
        assert_invalid(
            rtchan_recv_timeout(null_mut(), buf.as_mut_ptr().cast(), 8, 0, &mut m),
            "rtchan_recv_timeout",
            "rx",
        );
        assert_invalid(
            rtchan_stats(null_mut(), 1, &mut st),
            "rtchan_stats",
            "client",
        );
        assert_invalid(
            rtchan_sender_stats(null(), &mut st),
            "rtchan_sender_stats",
            "tx",
        );
        assert_invalid(
            rtchan_receiver_stats(null(), &mut st),
            "rtchan_receiver_stats",
            "rx",
        );
        assert_invalid(
            rtchan_close_channel(null_mut(), 1),
            "rtchan_close_channel",
            "client",
        );
        assert_invalid(rtchan_close_sender(null_mut()), "rtchan_close_sender", "tx");
        assert_invalid(
            rtchan_close_receiver(null_mut()),
            "rtchan_close_receiver",
            "rx",
        );
        rtchan_free_client(null_mut());
        rtchan_free_sender(null_mut());
        rtchan_free_receiver(null_mut());
        assert_eq!(rtchan_spec_init(&mut spec, 64, 1000, 4, 5000), 0);
    }
    assert!(tx.is_null() && rx.is_null());
    assert_eq!(
        (spec.mmax, spec.imin_ns, spec.bmax, spec.deadline_ns),
        (64, 1000, 4, 5000)
    );
    assert_eq!((spec.policy, spec.core, spec.best_effort), (0, -1, 0));
    assert!(spec.dst.is_null());
}

#[test]
fn bad_buffers_and_lengths_on_a_handle() {
    let mut h = closed_sender(16);
    let long = [0u8; 17];
    // SAFETY: `h` is a live handle; the pointers are NULL or point to the lengths given,
    // except where a length is deliberately bad (the code must refuse it before reading).
    unsafe {
        // Too long is refused before the pointer is looked at, and before closed-ness.
        assert_eq!(
            rtchan_send(&mut h, long.as_ptr().cast(), 17),
            -libc::EMSGSIZE
        );
        assert!(
            detail().contains("17 bytes exceeds the channel's mmax of 16"),
            "{}",
            detail()
        );
        assert_eq!(rtchan_send(&mut h, null(), usize::MAX), -libc::EMSGSIZE);
        assert_invalid(rtchan_send(&mut h, null(), 3), "rtchan_send", "msg is NULL");
        // A valid message on a closed sender.
        assert_eq!(rtchan_send(&mut h, long.as_ptr().cast(), 3), -libc::EPIPE);
        assert!(detail().contains("closed"), "{}", detail());
        assert_eq!(rtchan_sender_id(&h), 7);
        assert_eq!(rtchan_sender_mmax(&h), 16);
        let v = [
            rtchan_iovec {
                base: long.as_ptr().cast(),
                len: 2,
            },
            rtchan_iovec {
                base: null(),
                len: 5,
            },
        ];
        assert_invalid(
            rtchan_send_many(&mut h, v.as_ptr(), 2),
            "rtchan_send_many",
            "msgs[1]",
        );
        assert_invalid(
            rtchan_send_many(&mut h, null(), 1),
            "rtchan_send_many",
            "msgs",
        );
        assert_invalid(
            rtchan_send_many(&mut h, v.as_ptr(), i32::MAX as usize + 1),
            "rtchan_send_many",
            "count",
        );
        assert_eq!(rtchan_send_many(&mut h, v.as_ptr(), 1), -libc::EPIPE);
        assert_eq!(rtchan_close_sender(&mut h), -libc::EPIPE);
        let mut st = rtchan_channel_stats::default();
        assert_eq!(rtchan_sender_stats(&h, &mut st), -libc::EPIPE);

        let mut r = rtchan_receiver {
            inner: None,
            id: 9,
            mmax: 16,
        };
        let mut m = rtchan_message {
            len: 99,
            ..Default::default()
        };
        let mut buf = [0u8; 4];
        assert_invalid(
            rtchan_try_recv(&mut r, null_mut(), 4, &mut m),
            "rtchan_try_recv",
            "buf",
        );
        assert_eq!(m, rtchan_message::default(), "msg is cleared on failure");
        assert_invalid(
            rtchan_try_recv(&mut r, buf.as_mut_ptr().cast(), 4, null_mut()),
            "rtchan_try_recv",
            "msg",
        );
        assert_eq!(
            rtchan_try_recv(&mut r, buf.as_mut_ptr().cast(), 4, &mut m),
            -libc::EPIPE
        );
        assert_eq!(rtchan_receiver_id(&r), 9);
        assert_eq!(rtchan_close_receiver(&mut r), -libc::EPIPE);
    }
}

fn spec() -> rtchan_spec {
    let mut s = std::mem::MaybeUninit::<rtchan_spec>::uninit();
    // SAFETY: a writable rtchan_spec; rtchan_spec_init fills every field.
    unsafe {
        assert_eq!(
            rtchan_spec_init(s.as_mut_ptr(), 64, 1_000_000, 4, 10_000_000),
            0
        );
        s.assume_init()
    }
}

#[test]
fn spec_fields_are_checked() {
    let check = |s: &rtchan_spec| {
        // SAFETY: `dst` is NULL or a C string in every spec below.
        unsafe { open_spec(s, "rtchan_open") }
    };
    let o = check(&spec()).unwrap();
    assert_eq!(
        o,
        OpenSpec::new(64, Duration::from_millis(1), 4, Duration::from_millis(10))
    );
    let mut s = spec();
    s.policy = 3;
    s.core = 2;
    s.best_effort = 1;
    s.dst = c"b".as_ptr();
    let o = check(&s).unwrap();
    assert_eq!(o.policy, Some(Overflow::DropOldest));
    assert_eq!(
        (o.core, o.best_effort, o.dst.as_str()),
        (Some(2), true, "b")
    );
    for (f, name) in [
        (
            (|s: &mut rtchan_spec| s.policy = 4) as fn(&mut rtchan_spec),
            "spec->policy is 4",
        ),
        (|s| s.core = -2, "spec->core is -2"),
        (|s| s.core = 65536, "spec->core is 65536"),
        (|s| s.reserved = 1, "spec->reserved"),
        (|s| s.dst = c"\xff".as_ptr(), "spec->dst is not UTF-8"),
    ] {
        let mut s = spec();
        f(&mut s);
        assert_eq!(check(&s), Err(EINVAL), "{name}");
        assert!(detail().contains(name), "{name}: {}", detail());
    }
}

#[test]
fn connect_failures_say_why() {
    let dir = std::env::temp_dir().join(format!("rtchan-capi-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("no.sock");
    let path = std::ffi::CString::new(missing.to_str().unwrap()).unwrap();
    let mut c: *mut rtchan_client = null_mut();
    // SAFETY: a C string and a writable out-pointer.
    let r = unsafe { rtchan_connect(path.as_ptr(), &mut c) };
    assert_eq!(r, -libc::ENOENT, "{}", detail());
    assert!(c.is_null());
    assert!(detail().contains(missing.to_str().unwrap()), "{}", detail());
    // A file that is no listening socket: the daemon is not there.
    let plain = dir.join("plain");
    std::fs::write(&plain, b"").unwrap();
    let path = std::ffi::CString::new(plain.to_str().unwrap()).unwrap();
    // SAFETY: as above.
    let r = unsafe { rtchan_connect(path.as_ptr(), &mut c) };
    assert_eq!(r, -libc::ECONNRESET, "{}", detail());
    assert!(c.is_null());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every struct in rtchan.h has the Rust struct's size and field offsets (a C program compiled
/// with `cc` against the header prints them).
#[test]
fn header_layouts_match_the_rust_structs() {
    let include = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../include");
    let out = std::env::temp_dir().join(format!("rtchan-capi-layout-{}", std::process::id()));
    let src = out.with_extension("c");
    let mut c = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include \"rtchan.h\"\nint main(void) {\n",
    );
    let mut rust = String::new();
    macro_rules! layout {
        ($t:ident: $($f:ident),*) => {
            c.push_str(&format!(
                "printf(\"{} %zu\\n\", sizeof({}));\n",
                stringify!($t), stringify!($t)
            ));
            rust.push_str(&format!("{} {}\n", stringify!($t), size_of::<$t>()));
            $(
                c.push_str(&format!(
                    "printf(\"{}.{} %zu\\n\", offsetof({}, {}));\n",
                    stringify!($t), stringify!($f), stringify!($t), stringify!($f)
                ));
                rust.push_str(&format!(
                    "{}.{} {}\n", stringify!($t), stringify!($f), offset_of!($t, $f)
                ));
            )*
        };
    }
    layout!(rtchan_spec: mmax, bmax, imin_ns, deadline_ns, dst, policy, core, best_effort,
        reserved);
    layout!(rtchan_iovec: base, len);
    layout!(rtchan_message: len, seq, late, submit_ts, delivered_ts, deadline);
    layout!(rtchan_percentiles: count, p50, p99, p999, max);
    layout!(rtchan_channel_stats: id, has_tx, has_rx, reserved, uptime_s, tx_submitted,
        tx_sent, tx_packets, tx_bytes, tx_would_block, tx_dropped, tx_late_packets,
        tx_budget_overruns, tx_invalid, tx_delay, rx_delivered, rx_bytes, rx_deadline_misses,
        rx_lost, rx_duplicates, rx_reordered, rx_latency);
    c.push_str(
        "printf(\"policy %d %d %d %d\\n\", RTCHAN_POLICY_DEFAULT, RTCHAN_POLICY_BLOCK, \
         RTCHAN_POLICY_DROP_NEWEST, RTCHAN_POLICY_DROP_OLDEST);\n\
         printf(\"sent %d %d %d\\n\", RTCHAN_SENT_QUEUED, RTCHAN_SENT_DROPPED_NEWEST, \
         RTCHAN_SENT_QUEUED_DROPPED_OLDEST);\nreturn 0; }\n",
    );
    rust.push_str(&format!(
        "policy {POLICY_DEFAULT} {POLICY_BLOCK} {POLICY_DROP_NEWEST} {POLICY_DROP_OLDEST}\n"
    ));
    rust.push_str(&format!(
        "sent {} {} {}\n",
        sent_code(Sent::Queued),
        sent_code(Sent::DroppedNewest),
        sent_code(Sent::QueuedDroppedOldest)
    ));
    std::fs::write(&src, c).unwrap();
    let cc = std::process::Command::new("cc")
        .args(["-std=c11", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&src)
        .arg("-I")
        .arg(&include)
        .output()
        .expect("cc runs");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let run = std::process::Command::new(&out).output().unwrap();
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&src);
    assert_eq!(String::from_utf8(run.stdout).unwrap(), rust);
}
