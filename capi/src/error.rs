//! Error reporting across the C boundary: negative errno-style codes, their sentences
//! (`rtchan_strerror`), the thread's last error detail (`rtchan_last_error_message`) and the
//! guard every entry point runs in, so that a panic becomes `-EIO` instead of unwinding into C.
//!
//! The detail text lives in a thread-local buffer that is cleared and rewritten in place: after
//! its first use a hot-path failure (`-EAGAIN` in a send loop) formats into existing capacity
//! and does not allocate.

use std::cell::RefCell;
use std::ffi::{c_char, c_int};
use std::fmt::{self, Write as _};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Capacity the detail buffer starts with: every hot-path message fits, so only long control
/// replies (an admission refusal) make it grow.
const DETAIL_CAPACITY: usize = 512;

thread_local! {
    /// This thread's last error detail, NUL-terminated once written (empty: none yet).
    static DETAIL: RefCell<String> = RefCell::new(String::with_capacity(DETAIL_CAPACITY));
}

/// Records `func: detail` as this thread's last error and returns `code` (negative).
pub(crate) fn fail(code: c_int, func: &str, detail: fmt::Arguments<'_>) -> c_int {
    DETAIL.with(|d| {
        // A re-entrant call (a panic while formatting) leaves the old text.
        if let Ok(mut s) = d.try_borrow_mut() {
            s.clear();
            let _ = write!(s, "{func}: {detail}");
            // Interior NULs would cut the text short in C: replace them.
            if s.contains('\0') {
                *s = s.replace('\0', " ");
            }
            s.push('\0');
        }
    });
    code
}

/// `-EINVAL` with a detail naming the bad argument.
pub(crate) fn invalid(func: &str, detail: fmt::Arguments<'_>) -> c_int {
    fail(-libc::EINVAL, func, detail)
}

/// A pointer to this thread's last error detail (valid until the detail is next rewritten).
pub(crate) fn detail_ptr() -> *const c_char {
    DETAIL.with(|d| match d.try_borrow() {
        Ok(s) if !s.is_empty() => s.as_ptr().cast(),
        _ => c"".as_ptr(),
    })
}

/// Runs an entry point's body; a panic is caught, recorded and returned as `-EIO` (`code`).
pub(crate) fn guard<T>(func: &'static str, on_panic: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| p.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("unknown panic");
            fail(
                -libc::EIO,
                func,
                format_args!("internal error (a bug in librtchan): {what}"),
            );
            on_panic
        }
    }
}

/// The sentence for an errno-style code (either sign), for `rtchan_strerror`.
pub(crate) fn strerror(code: c_int) -> &'static std::ffi::CStr {
    // i32::MIN has no absolute value: -1 is no code of ours, so it reads as unknown.
    match code.checked_abs().unwrap_or(-1) {
        0 => c"success",
        libc::EINVAL => c"invalid argument (a NULL pointer, a bad length or a bad spec field)",
        libc::EAGAIN => c"would block: the channel's buffer is full (send) or empty (receive)",
        libc::EMSGSIZE => {
            c"message too long: longer than the channel's mmax (send) or the buffer (receive)"
        }
        libc::EPIPE => c"channel closed",
        libc::ECONNRESET => c"the daemon is gone (it died, stopped or hung up)",
        libc::ETIMEDOUT => c"no message within the timeout",
        libc::EPROTO => c"protocol error: the daemon's reply does not make sense",
        libc::ENOENT => c"no such channel, or no daemon socket at that path",
        libc::EACCES => c"permission denied by the daemon",
        libc::EBUSY => {
            c"refused: admission refused the channel, or its end is taken by another client"
        }
        libc::ENOSPC => c"a resource limit of the daemon refused it",
        libc::EHOSTUNREACH => c"the peer's control plane did not answer",
        libc::EIO => c"the daemon (or the library) failed internally",
        _ => c"unknown error code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn detail() -> String {
        // SAFETY: detail_ptr returns a NUL-terminated string that lives until the next write
        // on this thread; it is copied out at once.
        unsafe { CStr::from_ptr(detail_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn detail_is_empty_then_names_the_call() {
        std::thread::spawn(|| {
            assert_eq!(detail(), "");
            assert_eq!(invalid("rtchan_send", format_args!("tx is NULL")), -22);
            assert_eq!(detail(), "rtchan_send: tx is NULL");
            fail(-libc::EPIPE, "f", format_args!("a\0b"));
            assert_eq!(detail(), "f: a b");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn hot_path_detail_does_not_grow_the_buffer() {
        invalid("rtchan_send", format_args!("warm up"));
        let cap = DETAIL.with(|d| d.borrow().capacity());
        for i in 0..1000 {
            fail(
                -libc::EMSGSIZE,
                "rtchan_send",
                format_args!("message of {i} bytes exceeds the channel's mmax of 64 bytes"),
            );
        }
        assert_eq!(DETAIL.with(|d| d.borrow().capacity()), cap);
    }

    #[test]
    fn a_panic_becomes_eio_with_its_text() {
        let r = guard("rtchan_x", -1, || -> c_int { panic!("boom") });
        assert_eq!(r, -1);
        assert!(detail().contains("boom"), "{}", detail());
    }

    #[test]
    fn every_code_the_client_returns_has_its_own_sentence() {
        let codes = [
            libc::EINVAL,
            libc::EAGAIN,
            libc::EMSGSIZE,
            libc::EPIPE,
            libc::ECONNRESET,
            libc::ETIMEDOUT,
            libc::EPROTO,
            libc::ENOENT,
            libc::EACCES,
            libc::EBUSY,
            libc::ENOSPC,
            libc::EHOSTUNREACH,
            libc::EIO,
        ];
        let unknown = strerror(-9999);
        let mut seen = std::collections::HashSet::new();
        for c in codes {
            assert_ne!(strerror(-c), unknown, "{c}");
            assert_eq!(strerror(-c), strerror(c));
            assert!(seen.insert(strerror(c)), "{c} shares its sentence");
        }
        assert_eq!(strerror(i32::MIN), unknown);
        assert_eq!(strerror(0).to_str().unwrap(), "success");
    }
}
