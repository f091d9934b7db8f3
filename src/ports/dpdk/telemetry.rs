//! rtchan's own DPDK telemetry endpoints, beside DPDK's `/ethdev/stats` on the telemetry socket
//! (`/var/run/dpdk/<file-prefix>/dpdk_telemetry.v2`, what `dpdk-telemetry.py` talks to):
//! - `/rtchan/channels`: the channel table, one array per column (`id`, `direction`, `peer`,
//!   `submitted`, `sent`, `late_packets`, `delivered`, `deadline_misses`, `lost`,
//!   `latency_p99_ns`), at most [`MAX_ROWS`] rows, and `channels` (the full count);
//! - `/rtchan/channel,ID`: one channel's fields;
//! - `/rtchan/cores`: per polling core (= queue pair): `core`, `rx_packets`, `tx_packets`,
//!   `handed_in`, `handoff_dropped`.
//!
//! Data flow: the daemon's control thread publishes a [`Snapshot`] every few hundred ms
//! ([`publish`]); DPDK's telemetry thread runs the callbacks, which take the current snapshot
//! (an `Arc` under a mutex held for a pointer copy) and write it into the reply. Nothing here
//! touches the polling cores. The callbacks are Rust `extern "C"` functions registered with
//! `rte_telemetry_register_cmd`.

use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::error::{Error, Result};
use super::ffi;

/// Rows `/rtchan/channels` returns: DPDK 22.11's telemetry arrays hold at most 512 entries.
pub const MAX_ROWS: usize = 512;

/// One channel as telemetry shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TelChannel {
    /// Channel id.
    pub id: u32,
    /// `out` or `in`.
    pub direction: String,
    /// The peer (destination or source).
    pub peer: String,
    /// Messages submitted (sending side).
    pub submitted: u64,
    /// Messages sent (sending side).
    pub sent: u64,
    /// Packets sent after their link deadline (sending side).
    pub late_packets: u64,
    /// Messages delivered (receiving side).
    pub delivered: u64,
    /// Deadline misses (receiving side).
    pub deadline_misses: u64,
    /// Messages lost (receiving side).
    pub lost: u64,
    /// Latency p99, ns (receiving side end to end; sending side submit to wire).
    pub latency_p99_ns: u64,
}

/// One polling core (= queue pair) as telemetry shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TelCore {
    /// Core index.
    pub core: u16,
    /// Packets its RX queue received.
    pub rx_packets: u64,
    /// Packets its TX queue sent.
    pub tx_packets: u64,
    /// Frames other cores handed it.
    pub handed_in: u64,
    /// Frames for it dropped because its hand-off ring was full.
    pub handoff_dropped: u64,
}

/// What the endpoints answer with, as of the last [`publish`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The channels.
    pub channels: Vec<TelChannel>,
    /// The cores.
    pub cores: Vec<TelCore>,
}

static SNAPSHOT: Mutex<Option<Arc<Snapshot>>> = Mutex::new(None);
static REGISTERED: AtomicBool = AtomicBool::new(false);

/// Replaces the snapshot the endpoints answer with (control thread).
pub fn publish(s: Snapshot) {
    *SNAPSHOT.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(s));
}

fn current() -> Arc<Snapshot> {
    SNAPSHOT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_default()
}

/// Registers the endpoints (once per process; EAL must be initialised, with telemetry on).
pub fn register() -> Result<()> {
    if REGISTERED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    type Cb = unsafe extern "C" fn(*const c_char, *const c_char, *mut ffi::rte_tel_data) -> c_int;
    let cmds: [(&CStr, Cb, &CStr); 3] = [
        (
            c"/rtchan/channels",
            channels_cb,
            c"rtchan's channels, one array per column. Takes no parameters",
        ),
        (
            c"/rtchan/channel",
            channel_cb,
            c"One rtchan channel. Parameter: channel id",
        ),
        (
            c"/rtchan/cores",
            cores_cb,
            c"rtchan's polling cores (queue pairs). Takes no parameters",
        ),
    ];
    for (cmd, cb, help) in cmds {
        // SAFETY: cmd and help are static NUL-terminated strings (DPDK keeps the pointers);
        // cb has the telemetry_cb signature and is safe to call from any thread.
        let ret = unsafe { ffi::rte_telemetry_register_cmd(cmd.as_ptr(), Some(cb), help.as_ptr()) };
        if ret < 0 {
            return Err(Error::rte("rte_telemetry_register_cmd", ret));
        }
    }
    Ok(())
}

/// A telemetry reply under construction (the `rte_tel_data` DPDK passed to a callback).
struct Dict(*mut ffi::rte_tel_data);

impl Dict {
    /// # Safety
    /// `d` is the reply object DPDK passed to the running callback.
    unsafe fn start(d: *mut ffi::rte_tel_data) -> Self {
        // SAFETY: guaranteed by the caller.
        unsafe { ffi::rte_tel_data_start_dict(d) };
        Self(d)
    }

    fn u64(&self, name: &str, v: u64) {
        let n = cname(name);
        // SAFETY: self.0 is a started dict; n is NUL-terminated and copied by DPDK.
        unsafe { ffi::rte_tel_data_add_dict_u64(self.0, n.as_ptr(), v) };
    }

    fn str(&self, name: &str, v: &str) {
        let (n, v) = (cname(name), cname(v));
        // SAFETY: as above; both strings are copied (DPDK truncates overlong values).
        unsafe { ffi::rte_tel_data_add_dict_string(self.0, n.as_ptr(), v.as_ptr()) };
    }

    fn u64_column(&self, name: &str, vals: impl Iterator<Item = u64>) {
        // SAFETY: rte_tel_data_alloc returns a fresh object or NULL.
        let arr = unsafe { ffi::rte_tel_data_alloc() };
        if arr.is_null() {
            return;
        }
        // SAFETY: arr is a fresh object; each add only reads its arguments.
        unsafe {
            ffi::rte_tel_data_start_array(arr, ffi::RTE_TEL_U64_VAL);
            for v in vals {
                ffi::rte_tel_data_add_array_u64(arr, v);
            }
        }
        self.container(name, arr);
    }

    fn str_column<'a>(&self, name: &str, vals: impl Iterator<Item = &'a str>) {
        // SAFETY: as in u64_column.
        let arr = unsafe { ffi::rte_tel_data_alloc() };
        if arr.is_null() {
            return;
        }
        // SAFETY: arr is a fresh object; each string is copied.
        unsafe {
            ffi::rte_tel_data_start_array(arr, ffi::RTE_TEL_STRING_VAL);
            for v in vals {
                let c = cname(v);
                ffi::rte_tel_data_add_array_string(arr, c.as_ptr());
            }
        }
        self.container(name, arr);
    }

    fn container(&self, name: &str, arr: *mut ffi::rte_tel_data) {
        let n = cname(name);
        // SAFETY: self.0 is a started dict, arr a filled array; keep = 0 hands arr to DPDK,
        // which frees it with the reply (or on failure).
        let ret = unsafe { ffi::rte_tel_data_add_dict_container(self.0, n.as_ptr(), arr, 0) };
        if ret < 0 {
            // SAFETY: not taken by the dict: ours to free.
            unsafe { ffi::rte_tel_data_free(arr) };
        }
    }
}

fn cname(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

fn channel_fields(d: &Dict, c: &TelChannel) {
    d.u64("id", u64::from(c.id));
    d.str("direction", &c.direction);
    d.str("peer", &c.peer);
    d.u64("submitted", c.submitted);
    d.u64("sent", c.sent);
    d.u64("late_packets", c.late_packets);
    d.u64("delivered", c.delivered);
    d.u64("deadline_misses", c.deadline_misses);
    d.u64("lost", c.lost);
    d.u64("latency_p99_ns", c.latency_p99_ns);
}

unsafe extern "C" fn channels_cb(
    _cmd: *const c_char,
    _params: *const c_char,
    d: *mut ffi::rte_tel_data,
) -> c_int {
    let s = current();
    // SAFETY: d is the reply DPDK passed to this callback.
    let d = unsafe { Dict::start(d) };
    let rows = &s.channels[..s.channels.len().min(MAX_ROWS)];
    d.u64("channels", s.channels.len() as u64);
    d.u64_column("id", rows.iter().map(|c| u64::from(c.id)));
    d.str_column("direction", rows.iter().map(|c| c.direction.as_str()));
    d.str_column("peer", rows.iter().map(|c| c.peer.as_str()));
    d.u64_column("submitted", rows.iter().map(|c| c.submitted));
    d.u64_column("sent", rows.iter().map(|c| c.sent));
    d.u64_column("late_packets", rows.iter().map(|c| c.late_packets));
    d.u64_column("delivered", rows.iter().map(|c| c.delivered));
    d.u64_column("deadline_misses", rows.iter().map(|c| c.deadline_misses));
    d.u64_column("lost", rows.iter().map(|c| c.lost));
    d.u64_column("latency_p99_ns", rows.iter().map(|c| c.latency_p99_ns));
    0
}

unsafe extern "C" fn channel_cb(
    _cmd: *const c_char,
    params: *const c_char,
    d: *mut ffi::rte_tel_data,
) -> c_int {
    let id = if params.is_null() {
        None
    } else {
        // SAFETY: DPDK passes the command's parameter string, NUL-terminated.
        unsafe { CStr::from_ptr(params) }
            .to_str()
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
    };
    let Some(id) = id else {
        return -libc::EINVAL; // telemetry answers null: "/rtchan/channel,ID" needs an id
    };
    let s = current();
    let Some(c) = s.channels.iter().find(|c| c.id == id) else {
        return -libc::ENOENT;
    };
    // SAFETY: d is the reply DPDK passed to this callback.
    let d = unsafe { Dict::start(d) };
    channel_fields(&d, c);
    0
}

unsafe extern "C" fn cores_cb(
    _cmd: *const c_char,
    _params: *const c_char,
    d: *mut ffi::rte_tel_data,
) -> c_int {
    let s = current();
    // SAFETY: d is the reply DPDK passed to this callback.
    let d = unsafe { Dict::start(d) };
    d.u64_column("core", s.cores.iter().map(|c| u64::from(c.core)));
    d.u64_column("rx_packets", s.cores.iter().map(|c| c.rx_packets));
    d.u64_column("tx_packets", s.cores.iter().map(|c| c.tx_packets));
    d.u64_column("handed_in", s.cores.iter().map(|c| c.handed_in));
    d.u64_column("handoff_dropped", s.cores.iter().map(|c| c.handoff_dropped));
    0
}
