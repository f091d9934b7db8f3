//! The C API of rtchan's client library: `include/rtchan.h`, built as `librtchan.so` and
//! `librtchan.a` (`cargo build -p rtchan-capi`).
//!
//! Every function here is a thin wrapper over [`rtchan::client`]: it checks its pointers and
//! lengths (NULL or a bad length is `-EINVAL`, never a crash), calls the Rust API and turns the
//! outcome into a negative errno-style code (the Rust errors' `errno()`), recording a sentence
//! in the thread's last error detail. Each body runs under [`error::guard`]: a panic is caught
//! and returned as `-EIO`; nothing unwinds into C.
//!
//! Data flow: C handles are boxed Rust values ([`rtchan_client`] holds a
//! [`Client`], [`rtchan_sender`] an `Option<Sender>`, `None` once closed). Sending copies the
//! caller's bytes straight into the channel's shared-memory ring (`Sender::send`); receiving
//! copies out of the ring into the caller's buffer. The hot path (`rtchan_send*`,
//! `rtchan_*recv*`) allocates nothing: errors are `Copy`, the detail text is rewritten in a
//! thread-local buffer with spare capacity.
//!
//! `unsafe` is confined to this crate (it is the FFI layer): dereferencing the caller's
//! pointers, and the `no_mangle` entry points themselves, whose contract is in the header.

#![allow(non_camel_case_types)]

mod error;

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::PathBuf;
use std::time::Duration;

use error::{fail, guard, invalid};
use rtchan::client::{
    ChannelStats, Client, Error, Message, OpenSpec, Overflow, Receiver, RecvError, SendError,
    Sender, Sent,
};

/// A connection to the daemon (opaque in C).
pub struct rtchan_client {
    inner: Client,
}

/// The sending end of a channel (opaque in C). `inner` is `None` once closed.
pub struct rtchan_sender {
    inner: Option<Sender>,
    id: u32,
    mmax: u32,
}

/// The receiving end of a channel (opaque in C). `inner` is `None` once closed.
pub struct rtchan_receiver {
    inner: Option<Receiver>,
    id: u32,
    mmax: u32,
}

/// `enum rtchan_policy`.
const POLICY_DEFAULT: i32 = 0;
const POLICY_BLOCK: i32 = 1;
const POLICY_DROP_NEWEST: i32 = 2;
const POLICY_DROP_OLDEST: i32 = 3;

/// `rtchan_spec`: what `rtchan_open` asks for.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct rtchan_spec {
    /// Largest message, bytes.
    pub mmax: u32,
    /// Largest burst, messages.
    pub bmax: u32,
    /// Smallest interval between messages, ns.
    pub imin_ns: u64,
    /// End-to-end bound D, ns.
    pub deadline_ns: u64,
    /// Destination (NULL: `local`).
    pub dst: *const c_char,
    /// `enum rtchan_policy`.
    pub policy: i32,
    /// Core, or -1.
    pub core: i32,
    /// Nonzero: best-effort.
    pub best_effort: i32,
    /// Must be 0.
    pub reserved: u32,
}

/// `rtchan_iovec`: one message of `rtchan_send_many`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct rtchan_iovec {
    /// The message's bytes.
    pub base: *const c_void,
    /// Its length.
    pub len: usize,
}

/// `rtchan_message`: a received message's metadata.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct rtchan_message {
    /// Bytes.
    pub len: u64,
    /// Sequence number.
    pub seq: u32,
    /// 1: delivered after its deadline.
    pub late: u32,
    /// The sender's stamp.
    pub submit_ts: u64,
    /// Delivery into the ring.
    pub delivered_ts: u64,
    /// Absolute end-to-end deadline.
    pub deadline: u64,
}

/// `rtchan_percentiles`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct rtchan_percentiles {
    /// Samples.
    pub count: u64,
    /// Median, ns.
    pub p50: u64,
    /// 99th percentile, ns.
    pub p99: u64,
    /// 99.9th percentile, ns.
    pub p999: u64,
    /// Largest, ns.
    pub max: u64,
}

/// `rtchan_channel_stats`: a channel's key counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct rtchan_channel_stats {
    /// Channel id.
    pub id: u32,
    /// 1: this host sends on it.
    pub has_tx: u32,
    /// 1: this host receives it.
    pub has_rx: u32,
    /// 0.
    pub reserved: u32,
    /// Seconds since the channel opened.
    pub uptime_s: f64,
    /// Messages accepted.
    pub tx_submitted: u64,
    /// Messages whose last packet left.
    pub tx_sent: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Submits refused with a full buffer.
    pub tx_would_block: u64,
    /// Dropped by the policy or on close.
    pub tx_dropped: u64,
    /// Packets released after their link deadline.
    pub tx_late_packets: u64,
    /// Handler runs over their cycle budget.
    pub tx_budget_overruns: u64,
    /// Descriptors the client wrote that failed validation (refused, counted).
    pub tx_invalid: u64,
    /// Submit to last packet released.
    pub tx_delay: rtchan_percentiles,
    /// Messages delivered.
    pub rx_delivered: u64,
    /// Bytes delivered.
    pub rx_bytes: u64,
    /// Delivered after submit + D.
    pub rx_deadline_misses: u64,
    /// Sequence gaps.
    pub rx_lost: u64,
    /// Duplicates.
    pub rx_duplicates: u64,
    /// Out of order.
    pub rx_reordered: u64,
    /// Submit to delivery.
    pub rx_latency: rtchan_percentiles,
}

/// Runs an entry point returning `int`: `Ok(v)` and `Err(code)` both become the result.
fn run(func: &'static str, body: impl FnOnce() -> Result<c_int, c_int>) -> c_int {
    guard(func, -libc::EIO, || match body() {
        Ok(v) | Err(v) => v,
    })
}

/// `p` as an exclusive reference, or `-EINVAL` naming `arg`.
///
/// # Safety
/// `p` is NULL or points to a live `T` that nothing else uses during the call.
unsafe fn arg_mut<'a, T>(p: *mut T, func: &str, arg: &str) -> Result<&'a mut T, c_int> {
    // SAFETY: the caller's contract: NULL (handled) or a valid, unaliased `T`.
    unsafe { p.as_mut() }.ok_or_else(|| invalid(func, format_args!("{arg} is NULL")))
}

/// `p` as a shared reference, or `-EINVAL` naming `arg`.
///
/// # Safety
/// `p` is NULL or points to a live `T` that nothing writes during the call.
unsafe fn arg_ref<'a, T>(p: *const T, func: &str, arg: &str) -> Result<&'a T, c_int> {
    // SAFETY: the caller's contract: NULL (handled) or a valid `T`.
    unsafe { p.as_ref() }.ok_or_else(|| invalid(func, format_args!("{arg} is NULL")))
}

/// Checks a `(pointer, length)` pair: NULL is allowed only with length 0.
fn check_buf(p: *const c_void, len: usize, func: &str, arg: &str) -> Result<(), c_int> {
    if len > 0 && p.is_null() {
        return Err(invalid(
            func,
            format_args!("{arg} is NULL with a length of {len}"),
        ));
    }
    if len > isize::MAX as usize {
        return Err(invalid(
            func,
            format_args!("{arg}'s length {len} is not a length"),
        ));
    }
    Ok(())
}

/// The bytes at `(p, len)` (checked with [`check_buf`] first).
///
/// # Safety
/// `p` points to `len` readable bytes (or `len` is 0) that nothing writes during the call.
unsafe fn bytes<'a>(p: *const c_void, len: usize) -> &'a [u8] {
    if len == 0 {
        return &[];
    }
    // SAFETY: the caller's contract; `check_buf` ruled out NULL and lengths over isize::MAX.
    unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }
}

/// The writable bytes at `(p, len)` (checked with [`check_buf`] first).
///
/// # Safety
/// `p` points to `len` writable bytes (or `len` is 0) that nothing else uses during the call.
unsafe fn bytes_mut<'a>(p: *mut c_void, len: usize) -> &'a mut [u8] {
    if len == 0 {
        return &mut [];
    }
    // SAFETY: the caller's contract; `check_buf` ruled out NULL and lengths over isize::MAX.
    unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) }
}

/// Stores a new handle in `*out`.
///
/// # Safety
/// `out` is non-NULL and points to writable storage for a pointer.
unsafe fn give<T>(out: *mut *mut T, v: T) {
    // SAFETY: the caller checked `out` is non-NULL; C owns the box from here (freed by the
    // matching rtchan_free_*).
    unsafe { out.write(Box::into_raw(Box::new(v))) };
}

/// Checks an out-pointer and sets it to NULL, so that a failure leaves no stale handle.
///
/// # Safety
/// `out` is NULL or points to writable storage for a pointer.
unsafe fn reset_out<T>(out: *mut *mut T, func: &str) -> Result<(), c_int> {
    if out.is_null() {
        return Err(invalid(func, format_args!("out is NULL")));
    }
    // SAFETY: non-NULL and writable per the caller's contract.
    unsafe { out.write(std::ptr::null_mut()) };
    Ok(())
}

/// A control-path failure: its code, with the daemon's detail (the field, admission's reason).
fn control_err(func: &str, e: &Error) -> c_int {
    match e {
        Error::Api(a) => {
            let field = match &a.field {
                Some(f) if !a.message.contains(f.as_str()) => format!(" (field `{f}`)"),
                _ => String::new(),
            };
            // The daemon's message usually states the rejection already; add what it lacks.
            let mut refusal = String::new();
            if let Some(r) = &a.refusal {
                let why = r.rejection.to_string();
                if !a.message.contains(&why) {
                    refusal = format!("; refused on the {} host {}: {why}", r.side, r.host);
                }
                if let Some(t) = r.tightest_deadline {
                    refusal.push_str(&format!(
                        "; the tightest end-to-end deadline admitted now is {t} ns"
                    ));
                }
            }
            fail(
                e.errno(),
                func,
                format_args!("{}{field}{refusal}", a.message),
            )
        }
        other => fail(other.errno(), func, format_args!("{other}")),
    }
}

fn send_err(func: &str, e: SendError) -> c_int {
    fail(e.errno(), func, format_args!("{e}"))
}

fn recv_err(func: &str, e: RecvError) -> c_int {
    fail(e.errno(), func, format_args!("{e}"))
}

fn sent_code(s: Sent) -> c_int {
    match s {
        Sent::Queued => 0,
        Sent::DroppedNewest => 1,
        Sent::QueuedDroppedOldest => 2,
    }
}

impl rtchan_sender {
    fn open(&mut self, func: &str) -> Result<&mut Sender, c_int> {
        let id = self.id;
        self.inner.as_mut().ok_or_else(|| {
            fail(
                -libc::EPIPE,
                func,
                format_args!("channel {id}: this sender was closed with rtchan_close_sender"),
            )
        })
    }
}

impl rtchan_receiver {
    fn open(&mut self, func: &str) -> Result<&mut Receiver, c_int> {
        let id = self.id;
        self.inner.as_mut().ok_or_else(|| {
            fail(
                -libc::EPIPE,
                func,
                format_args!("channel {id}: this receiver was closed with rtchan_close_receiver"),
            )
        })
    }
}

/// `rtchan_percentiles` from the protocol's percentiles (a macro: the type is not re-exported).
macro_rules! percentiles {
    ($p:expr) => {
        rtchan_percentiles {
            count: $p.count,
            p50: $p.p50,
            p99: $p.p99,
            p999: $p.p999,
            max: $p.max,
        }
    };
}

fn to_c_stats(s: &ChannelStats) -> rtchan_channel_stats {
    let mut c = rtchan_channel_stats {
        id: s.id,
        uptime_s: s.uptime_s,
        ..rtchan_channel_stats::default()
    };
    if let Some(t) = &s.tx {
        c.has_tx = 1;
        c.tx_submitted = t.submitted;
        c.tx_sent = t.sent;
        c.tx_packets = t.packets;
        c.tx_bytes = t.bytes;
        c.tx_would_block = t.would_block;
        c.tx_dropped = t.dropped;
        c.tx_late_packets = t.late_packets;
        c.tx_budget_overruns = t.budget_overruns;
        c.tx_invalid = t.invalid;
        c.tx_delay = percentiles!(t.delay);
    }
    if let Some(r) = &s.rx {
        c.has_rx = 1;
        c.rx_delivered = r.delivered;
        c.rx_bytes = r.bytes;
        c.rx_deadline_misses = r.deadline_misses;
        c.rx_lost = r.lost;
        c.rx_duplicates = r.duplicates;
        c.rx_reordered = r.reordered;
        c.rx_latency = percentiles!(r.latency);
    }
    c
}

fn to_c_message(m: &Message) -> rtchan_message {
    rtchan_message {
        len: m.len as u64,
        seq: m.seq,
        late: u32::from(m.late),
        submit_ts: m.submit_ts,
        delivered_ts: m.delivered_ts,
        deadline: m.deadline,
    }
}

/// The Rust spec for a C spec, every field checked.
///
/// # Safety
/// `spec.dst` is NULL or a NUL-terminated string.
unsafe fn open_spec(spec: &rtchan_spec, func: &str) -> Result<OpenSpec, c_int> {
    let mut o = OpenSpec::new(
        spec.mmax,
        Duration::from_nanos(spec.imin_ns),
        spec.bmax,
        Duration::from_nanos(spec.deadline_ns),
    );
    if !spec.dst.is_null() {
        // SAFETY: non-NULL, NUL-terminated per the caller's contract.
        let dst = unsafe { CStr::from_ptr(spec.dst) };
        o.dst = dst
            .to_str()
            .map_err(|_| invalid(func, format_args!("spec->dst is not UTF-8")))?
            .to_string();
    }
    o.policy = match spec.policy {
        POLICY_DEFAULT => None,
        POLICY_BLOCK => Some(Overflow::Block),
        POLICY_DROP_NEWEST => Some(Overflow::DropNewest),
        POLICY_DROP_OLDEST => Some(Overflow::DropOldest),
        p => {
            return Err(invalid(
                func,
                format_args!("spec->policy is {p}, not one of RTCHAN_POLICY_* (0-3)"),
            ))
        }
    };
    o.core = match spec.core {
        -1 => None,
        c => Some(u16::try_from(c).map_err(|_| {
            invalid(
                func,
                format_args!("spec->core is {c}: a core number (0-65535) or -1"),
            )
        })?),
    };
    o.best_effort = spec.best_effort != 0;
    if spec.reserved != 0 {
        return Err(invalid(func, format_args!("spec->reserved is not 0")));
    }
    Ok(o)
}

/// Fills `*spec` with the given numbers and the defaults.
///
/// # Safety
/// `spec` is NULL or points to writable storage for an `rtchan_spec`.
#[no_mangle]
pub unsafe extern "C" fn rtchan_spec_init(
    spec: *mut rtchan_spec,
    mmax: u32,
    imin_ns: u64,
    bmax: u32,
    deadline_ns: u64,
) -> c_int {
    const F: &str = "rtchan_spec_init";
    run(F, || {
        if spec.is_null() {
            return Err(invalid(F, format_args!("spec is NULL")));
        }
        let v = rtchan_spec {
            mmax,
            bmax,
            imin_ns,
            deadline_ns,
            dst: std::ptr::null(),
            policy: POLICY_DEFAULT,
            core: -1,
            best_effort: 0,
            reserved: 0,
        };
        // SAFETY: non-NULL and writable per the contract; `write` needs no valid old value.
        unsafe { spec.write(v) };
        Ok(0)
    })
}

/// Connects to the daemon.
///
/// # Safety
/// `socket_path` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rtchan_connect(
    socket_path: *const c_char,
    out: *mut *mut rtchan_client,
) -> c_int {
    const F: &str = "rtchan_connect";
    run(F, || {
        // SAFETY: `out` is NULL or writable per the contract.
        unsafe { reset_out(out, F) }?;
        let path = if socket_path.is_null() {
            rtchan::client::default_socket()
        } else {
            use std::os::unix::ffi::OsStrExt;
            // SAFETY: non-NULL, NUL-terminated per the contract.
            let b = unsafe { CStr::from_ptr(socket_path) }.to_bytes();
            PathBuf::from(std::ffi::OsStr::from_bytes(b))
        };
        match Client::connect(&path) {
            Ok(c) => {
                // SAFETY: `out` was checked non-NULL by reset_out.
                unsafe { give(out, rtchan_client { inner: c }) };
                Ok(0)
            }
            Err(e) if !path.exists() => Err(fail(
                -libc::ENOENT,
                F,
                format_args!("no daemon socket at {}: {e}", path.display()),
            )),
            Err(e) => Err(control_err(F, &e)),
        }
    })
}

/// Opens a channel fed by this process.
///
/// # Safety
/// `client` is NULL or a live client; `spec` NULL or a valid spec; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rtchan_open(
    client: *mut rtchan_client,
    spec: *const rtchan_spec,
    out: *mut *mut rtchan_sender,
) -> c_int {
    const F: &str = "rtchan_open";
    run(F, || {
        // SAFETY: each pointer is NULL or valid per the contract.
        unsafe { reset_out(out, F) }?;
        // SAFETY: as above.
        let client = unsafe { arg_ref(client, F, "client") }?;
        // SAFETY: as above.
        let spec = unsafe { arg_ref(spec, F, "spec") }?;
        // SAFETY: `spec.dst` is NULL or a C string per the contract.
        let spec = unsafe { open_spec(spec, F) }?;
        let s = client.inner.open(&spec).map_err(|e| control_err(F, &e))?;
        let h = rtchan_sender {
            id: s.id(),
            mmax: s.mmax(),
            inner: Some(s),
        };
        // SAFETY: `out` checked non-NULL by reset_out.
        unsafe { give(out, h) };
        Ok(0)
    })
}

/// Attaches to the sending end of channel `channel_id`.
///
/// # Safety
/// `client` is NULL or a live client; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rtchan_attach_sender(
    client: *mut rtchan_client,
    channel_id: u32,
    out: *mut *mut rtchan_sender,
) -> c_int {
    const F: &str = "rtchan_attach_sender";
    run(F, || {
        // SAFETY: NULL or writable per the contract.
        unsafe { reset_out(out, F) }?;
        // SAFETY: NULL or a live client per the contract.
        let client = unsafe { arg_ref(client, F, "client") }?;
        let s = client
            .inner
            .attach_sender(channel_id)
            .map_err(|e| control_err(F, &e))?;
        let h = rtchan_sender {
            id: s.id(),
            mmax: s.mmax(),
            inner: Some(s),
        };
        // SAFETY: `out` checked non-NULL by reset_out.
        unsafe { give(out, h) };
        Ok(0)
    })
}

/// Attaches to the receiving end of channel `channel_id`.
///
/// # Safety
/// `client` is NULL or a live client; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rtchan_attach_receiver(
    client: *mut rtchan_client,
    channel_id: u32,
    out: *mut *mut rtchan_receiver,
) -> c_int {
    const F: &str = "rtchan_attach_receiver";
    run(F, || {
        // SAFETY: NULL or writable per the contract.
        unsafe { reset_out(out, F) }?;
        // SAFETY: NULL or a live client per the contract.
        let client = unsafe { arg_ref(client, F, "client") }?;
        let r = client
            .inner
            .attach_receiver(channel_id)
            .map_err(|e| control_err(F, &e))?;
        let h = rtchan_receiver {
            id: r.id(),
            mmax: r.mmax(),
            inner: Some(r),
        };
        // SAFETY: `out` checked non-NULL by reset_out.
        unsafe { give(out, h) };
        Ok(0)
    })
}

/// Runs an `int64_t` getter: a NULL handle is `-EINVAL`.
fn getter<T>(func: &'static str, p: *const T, arg: &str, f: impl FnOnce(&T) -> u32) -> i64 {
    guard(func, -i64::from(libc::EIO), || {
        // SAFETY: NULL or a live handle per the header's contract.
        match unsafe { arg_ref(p, func, arg) } {
            Ok(h) => i64::from(f(h)),
            Err(c) => i64::from(c),
        }
    })
}

/// The sender's channel id.
///
/// # Safety
/// `tx` is NULL or a live sender.
#[no_mangle]
pub unsafe extern "C" fn rtchan_sender_id(tx: *const rtchan_sender) -> i64 {
    getter("rtchan_sender_id", tx, "tx", |h| h.id)
}

/// The sender's channel mmax.
///
/// # Safety
/// `tx` is NULL or a live sender.
#[no_mangle]
pub unsafe extern "C" fn rtchan_sender_mmax(tx: *const rtchan_sender) -> i64 {
    getter("rtchan_sender_mmax", tx, "tx", |h| h.mmax)
}

/// The receiver's channel id.
///
/// # Safety
/// `rx` is NULL or a live receiver.
#[no_mangle]
pub unsafe extern "C" fn rtchan_receiver_id(rx: *const rtchan_receiver) -> i64 {
    getter("rtchan_receiver_id", rx, "rx", |h| h.id)
}

/// The receiver's channel mmax.
///
/// # Safety
/// `rx` is NULL or a live receiver.
#[no_mangle]
pub unsafe extern "C" fn rtchan_receiver_mmax(rx: *const rtchan_receiver) -> i64 {
    getter("rtchan_receiver_mmax", rx, "rx", |h| h.mmax)
}

/// Checks a message for `tx`: its length against mmax first (a too-long message is never
/// read), then the pointer.
fn check_msg(h: &rtchan_sender, msg: *const c_void, len: usize, func: &str) -> Result<(), c_int> {
    if len > h.mmax as usize {
        return Err(send_err(func, SendError::TooLong { len, mmax: h.mmax }));
    }
    check_buf(msg, len, func, "msg")
}

/// Sends one message.
///
/// # Safety
/// `tx` is NULL or a live sender; `msg` points to `len` readable bytes (or `len` is 0).
#[no_mangle]
pub unsafe extern "C" fn rtchan_send(
    tx: *mut rtchan_sender,
    msg: *const c_void,
    len: usize,
) -> c_int {
    const F: &str = "rtchan_send";
    run(F, || {
        // SAFETY: NULL or a live sender per the contract.
        let h = unsafe { arg_mut(tx, F, "tx") }?;
        check_msg(h, msg, len, F)?;
        // SAFETY: checked; `len` readable bytes per the contract.
        let m = unsafe { bytes(msg, len) };
        h.open(F)?
            .send(m)
            .map(sent_code)
            .map_err(|e| send_err(F, e))
    })
}

/// Sends one message, retrying a full buffer until `timeout_ns`.
///
/// # Safety
/// As [`rtchan_send`].
#[no_mangle]
pub unsafe extern "C" fn rtchan_send_timeout(
    tx: *mut rtchan_sender,
    msg: *const c_void,
    len: usize,
    timeout_ns: u64,
) -> c_int {
    const F: &str = "rtchan_send_timeout";
    run(F, || {
        // SAFETY: NULL or a live sender per the contract.
        let h = unsafe { arg_mut(tx, F, "tx") }?;
        check_msg(h, msg, len, F)?;
        // SAFETY: checked; `len` readable bytes per the contract.
        let m = unsafe { bytes(msg, len) };
        h.open(F)?
            .send_timeout(m, Duration::from_nanos(timeout_ns))
            .map(sent_code)
            .map_err(|e| send_err(F, e))
    })
}

/// Sends a batch with one publish.
///
/// # Safety
/// `tx` is NULL or a live sender; `msgs` points to `count` entries, each pointing to `len`
/// readable bytes.
#[no_mangle]
pub unsafe extern "C" fn rtchan_send_many(
    tx: *mut rtchan_sender,
    msgs: *const rtchan_iovec,
    count: usize,
) -> c_int {
    const F: &str = "rtchan_send_many";
    run(F, || {
        // SAFETY: NULL or a live sender per the contract.
        let h = unsafe { arg_mut(tx, F, "tx") }?;
        if count > i32::MAX as usize {
            return Err(invalid(F, format_args!("count {count} exceeds INT32_MAX")));
        }
        if count > 0 && msgs.is_null() {
            return Err(invalid(
                F,
                format_args!("msgs is NULL with a count of {count}"),
            ));
        }
        let v: &[rtchan_iovec] = if count == 0 {
            &[]
        } else {
            // SAFETY: non-NULL, `count` entries per the contract; count ≤ INT32_MAX keeps the
            // size within isize.
            unsafe { std::slice::from_raw_parts(msgs, count) }
        };
        for (i, m) in v.iter().enumerate() {
            if m.len > 0 && m.base.is_null() {
                return Err(invalid(
                    F,
                    format_args!("msgs[{i}].base is NULL with a length of {}", m.len),
                ));
            }
            if m.len > isize::MAX as usize {
                return Err(invalid(
                    F,
                    format_args!("msgs[{i}].len {} is not a length", m.len),
                ));
            }
        }
        let mmax = h.mmax as usize;
        let s = h.open(F)?;
        // A message over mmax stops the batch there (TooLong if it is the first) without its
        // bytes being read: it stands in as a zero-length slice that is never reached.
        let mut too_long = None;
        let iter = v.iter().map_while(|m| {
            if m.len > mmax {
                too_long = Some(m.len);
                return None;
            }
            // SAFETY: checked above; `len` readable bytes per the contract.
            Some(unsafe { bytes(m.base, m.len) })
        });
        match s.send_many(iter) {
            Ok(0) if too_long.is_some() => Err(send_err(
                F,
                SendError::TooLong {
                    len: too_long.unwrap_or(0),
                    mmax: mmax as u32,
                },
            )),
            Ok(n) => Ok(n as c_int),
            Err(e) => Err(send_err(F, e)),
        }
    })
}

/// Receives into `buf` with `f` (a non-blocking or a waiting receive).
///
/// # Safety
/// As [`rtchan_try_recv`].
unsafe fn recv_into(
    func: &'static str,
    rx: *mut rtchan_receiver,
    buf: *mut c_void,
    cap: usize,
    msg: *mut rtchan_message,
    f: impl FnOnce(&mut Receiver, &mut [u8]) -> Result<Message, RecvError>,
) -> c_int {
    run(func, || {
        // SAFETY: NULL or a live receiver per the contract.
        let h = unsafe { arg_mut(rx, func, "rx") }?;
        // SAFETY: NULL or writable per the contract.
        let out = unsafe { arg_mut(msg, func, "msg") }?;
        *out = rtchan_message::default();
        check_buf(buf, cap, func, "buf")?;
        // Never more than a message can hold: the rest of a large buffer is not touched.
        let cap = cap.min(h.mmax as usize);
        // SAFETY: checked; `cap` writable bytes per the contract.
        let b = unsafe { bytes_mut(buf, cap) };
        match f(h.open(func)?, b) {
            Ok(m) => {
                *out = to_c_message(&m);
                Ok(0)
            }
            Err(e) => {
                if let RecvError::BufferTooSmall { len, .. } = e {
                    out.len = len as u64;
                }
                Err(recv_err(func, e))
            }
        }
    })
}

/// Non-blocking receive.
///
/// # Safety
/// `rx` is NULL or a live receiver; `buf` points to `cap` writable bytes (or `cap` is 0);
/// `msg` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rtchan_try_recv(
    rx: *mut rtchan_receiver,
    buf: *mut c_void,
    cap: usize,
    msg: *mut rtchan_message,
) -> c_int {
    // SAFETY: the same contract.
    unsafe { recv_into("rtchan_try_recv", rx, buf, cap, msg, |r, b| r.try_recv(b)) }
}

/// Receive waiting up to `timeout_ns`.
///
/// # Safety
/// As [`rtchan_try_recv`].
#[no_mangle]
pub unsafe extern "C" fn rtchan_recv_timeout(
    rx: *mut rtchan_receiver,
    buf: *mut c_void,
    cap: usize,
    timeout_ns: u64,
    msg: *mut rtchan_message,
) -> c_int {
    let t = Duration::from_nanos(timeout_ns);
    // SAFETY: the same contract.
    unsafe {
        recv_into("rtchan_recv_timeout", rx, buf, cap, msg, |r, b| {
            r.recv_timeout(b, t)
        })
    }
}

/// Writes statistics to `out`.
///
/// # Safety
/// `out` is NULL or writable.
unsafe fn put_stats(
    func: &str,
    out: *mut rtchan_channel_stats,
    get: impl FnOnce() -> Result<ChannelStats, Error>,
) -> Result<c_int, c_int> {
    // SAFETY: NULL or writable per the contract.
    let out = unsafe { arg_mut(out, func, "out") }?;
    let s = get().map_err(|e| control_err(func, &e))?;
    *out = to_c_stats(&s);
    Ok(0)
}

/// Statistics of channel `channel_id`.
///
/// # Safety
/// `client` is NULL or a live client; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rtchan_stats(
    client: *mut rtchan_client,
    channel_id: u32,
    out: *mut rtchan_channel_stats,
) -> c_int {
    const F: &str = "rtchan_stats";
    run(F, || {
        // SAFETY: NULL or a live client per the contract.
        let c = unsafe { arg_ref(client, F, "client") }?;
        // SAFETY: NULL or writable per the contract.
        unsafe { put_stats(F, out, || c.inner.stats(channel_id)) }
    })
}

/// Statistics of a sender's channel.
///
/// # Safety
/// `tx` is NULL or a live sender; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rtchan_sender_stats(
    tx: *const rtchan_sender,
    out: *mut rtchan_channel_stats,
) -> c_int {
    const F: &str = "rtchan_sender_stats";
    run(F, || {
        // SAFETY: NULL or a live sender per the contract.
        let h = unsafe { arg_ref(tx, F, "tx") }?;
        let Some(s) = &h.inner else {
            return Err(fail(
                -libc::EPIPE,
                F,
                format_args!("channel {}: this sender was closed", h.id),
            ));
        };
        // SAFETY: NULL or writable per the contract.
        unsafe { put_stats(F, out, || s.stats()) }
    })
}

/// Statistics of a receiver's channel.
///
/// # Safety
/// `rx` is NULL or a live receiver; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rtchan_receiver_stats(
    rx: *const rtchan_receiver,
    out: *mut rtchan_channel_stats,
) -> c_int {
    const F: &str = "rtchan_receiver_stats";
    run(F, || {
        // SAFETY: NULL or a live receiver per the contract.
        let h = unsafe { arg_ref(rx, F, "rx") }?;
        let Some(r) = &h.inner else {
            return Err(fail(
                -libc::EPIPE,
                F,
                format_args!("channel {}: this receiver was closed", h.id),
            ));
        };
        // SAFETY: NULL or writable per the contract.
        unsafe { put_stats(F, out, || r.stats()) }
    })
}

/// Closes channel `channel_id`.
///
/// # Safety
/// `client` is NULL or a live client.
#[no_mangle]
pub unsafe extern "C" fn rtchan_close_channel(
    client: *mut rtchan_client,
    channel_id: u32,
) -> c_int {
    const F: &str = "rtchan_close_channel";
    run(F, || {
        // SAFETY: NULL or a live client per the contract.
        let c = unsafe { arg_ref(client, F, "client") }?;
        c.inner.close(channel_id).map_err(|e| control_err(F, &e))?;
        Ok(0)
    })
}

/// Closes a sender's channel; the handle stays until freed.
///
/// # Safety
/// `tx` is NULL or a live sender.
#[no_mangle]
pub unsafe extern "C" fn rtchan_close_sender(tx: *mut rtchan_sender) -> c_int {
    const F: &str = "rtchan_close_sender";
    run(F, || {
        // SAFETY: NULL or a live sender per the contract.
        let h = unsafe { arg_mut(tx, F, "tx") }?;
        h.open(F)?;
        let s = h.inner.take().expect("checked open");
        s.close().map_err(|e| control_err(F, &e))?;
        Ok(0)
    })
}

/// Detaches a receiver; the handle stays until freed.
///
/// # Safety
/// `rx` is NULL or a live receiver.
#[no_mangle]
pub unsafe extern "C" fn rtchan_close_receiver(rx: *mut rtchan_receiver) -> c_int {
    const F: &str = "rtchan_close_receiver";
    run(F, || {
        // SAFETY: NULL or a live receiver per the contract.
        let h = unsafe { arg_mut(rx, F, "rx") }?;
        h.open(F)?;
        let r = h.inner.take().expect("checked open");
        r.close().map_err(|e| control_err(F, &e))?;
        Ok(0)
    })
}

/// Frees a boxed handle (NULL: nothing).
///
/// # Safety
/// `p` is NULL or a handle this library made, not freed before.
unsafe fn free<T>(func: &'static str, p: *mut T) {
    guard(func, (), || {
        if !p.is_null() {
            // SAFETY: made by `give` (Box::into_raw) and not freed before, per the contract.
            drop(unsafe { Box::from_raw(p) });
        }
    })
}

/// Frees a client.
///
/// # Safety
/// `client` is NULL or a client not freed before.
#[no_mangle]
pub unsafe extern "C" fn rtchan_free_client(client: *mut rtchan_client) {
    // SAFETY: the same contract.
    unsafe { free("rtchan_free_client", client) }
}

/// Frees a sender (closing its channel if open).
///
/// # Safety
/// `tx` is NULL or a sender not freed before.
#[no_mangle]
pub unsafe extern "C" fn rtchan_free_sender(tx: *mut rtchan_sender) {
    // SAFETY: the same contract.
    unsafe { free("rtchan_free_sender", tx) }
}

/// Frees a receiver (detaching it if attached).
///
/// # Safety
/// `rx` is NULL or a receiver not freed before.
#[no_mangle]
pub unsafe extern "C" fn rtchan_free_receiver(rx: *mut rtchan_receiver) {
    // SAFETY: the same contract.
    unsafe { free("rtchan_free_receiver", rx) }
}

/// A static sentence for `code`.
#[no_mangle]
pub extern "C" fn rtchan_strerror(code: c_int) -> *const c_char {
    guard("rtchan_strerror", c"unknown error code".as_ptr(), || {
        error::strerror(code).as_ptr()
    })
}

/// This thread's last error detail.
#[no_mangle]
pub extern "C" fn rtchan_last_error_message() -> *const c_char {
    guard("rtchan_last_error_message", c"".as_ptr(), error::detail_ptr)
}

#[cfg(test)]
mod tests;
