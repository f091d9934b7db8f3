//! The libc calls of the dataplane outside the rings: the monotonic clock and the calling
//! thread's scheduling.

use std::io;

/// Reads `CLOCK_MONOTONIC` as (seconds, nanoseconds).
#[inline]
pub(crate) fn clock_monotonic() -> (u64, u64) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64, ts.tv_nsec as u64)
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `sched_setscheduler(0, SCHED_FIFO, priority)` for the calling thread.
pub(crate) fn sched_fifo(priority: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a valid sched_param for the duration of the call; pid 0 is the
    // calling thread; the call only changes scheduling attributes.
    check(unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) })
}

/// `setpriority(PRIO_PROCESS, 0, nice)`: the calling thread's nice value.
pub(crate) fn set_nice(nice: i32) -> io::Result<()> {
    // SAFETY: plain syscall wrapper; who = 0 is the calling thread on Linux.
    check(unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) })
}
