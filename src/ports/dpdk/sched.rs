//! DPDK's own hierarchical QoS scheduler (`librte_sched`), wrapped for the comparison in
//! `dpdk-bench`: one port, one subport, one pipe per channel, every packet in traffic class 0,
//! queue 0 of its pipe.
//!
//! `rte_sched` is a shaper and strict-priority/WRR scheduler (port → subport → pipe → traffic
//! class → queue), not an EDF scheduler: the comparison measures what one packet costs through
//! DPDK's scheduler against what it costs through rtchan's handlers and EDF link scheduler.
//!
//! Mbufs handed to [`SchedPort::enqueue`] belong to the scheduler (it frees the ones it drops
//! when a queue is full); [`SchedPort::dequeue`] hands them back. Dropping the port frees the
//! mbufs still queued.

use std::ffi::CString;
use std::ptr::NonNull;

use dataplane::port::{Batch, MAX_BURST};

use super::eal::Eal;
use super::error::{Error, Result};
use super::ffi;
use super::mbuf::Mbuf;

/// How to build a [`SchedPort`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedConfig {
    /// Name (unique in the process).
    pub name: String,
    /// Port rate, bytes per second; every subport, pipe and traffic class gets the same rate,
    /// so only the port's rate shapes.
    pub rate_bytes_per_sec: u64,
    /// Pipes, one per channel (rte_sched enables a power of two: the count is rounded up and
    /// the extra pipes stay empty).
    pub pipes: u32,
    /// Packets per queue (a power of two).
    pub queue_size: u16,
    /// Largest frame, bytes.
    pub mtu: u32,
    /// Bytes a frame costs beyond its length (preamble, FCS, gap: 24).
    pub frame_overhead: u32,
}

impl SchedConfig {
    /// `pipes` pipes at `rate_bytes_per_sec`, 64-packet queues, 1500-byte MTU.
    pub fn new(name: impl Into<String>, pipes: u32, rate_bytes_per_sec: u64) -> Self {
        SchedConfig {
            name: name.into(),
            rate_bytes_per_sec,
            pipes,
            queue_size: 64,
            mtu: 1500,
            frame_overhead: ffi::RTE_SCHED_FRAME_OVERHEAD_DEFAULT,
        }
    }
}

/// A configured `rte_sched_port`.
pub struct SchedPort {
    ptr: NonNull<ffi::rte_sched_port>,
    pipes: u32,
    _eal: Eal,
}

// SAFETY: the port is only used through &mut self (enqueue/dequeue) or for pure metadata
// writes into mbufs the caller owns (classify); rte_sched has no thread affinity.
unsafe impl Send for SchedPort {}

impl std::fmt::Debug for SchedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedPort")
            .field("pipes", &self.pipes)
            .finish()
    }
}

impl SchedPort {
    /// Configures the port, its subport and every pipe (`rte_sched_port_config`,
    /// `rte_sched_subport_config`, `rte_sched_pipe_config`).
    pub fn new(eal: &Eal, cfg: &SchedConfig) -> Result<SchedPort> {
        if cfg.pipes == 0 {
            return Err(Error::InvalidArgument(
                "rte_sched needs at least one pipe".into(),
            ));
        }
        if !cfg.queue_size.is_power_of_two() {
            return Err(Error::InvalidArgument(format!(
                "rte_sched queue size {} is not a power of two",
                cfg.queue_size
            )));
        }
        let name = CString::new(cfg.name.as_str())
            .map_err(|_| Error::InvalidArgument("scheduler name contains NUL".into()))?;
        let rate = cfg.rate_bytes_per_sec;
        // Token buckets: one MTU-sized burst is enough, the rates are what matter; 10 ms
        // traffic-class periods (the library's examples use 10-40 ms).
        let mut subport_profile = ffi::rte_sched_subport_profile_params {
            tb_rate: rate,
            tb_size: 1_000_000,
            tc_period: 10,
            ..Default::default()
        };
        subport_profile.tc_rate.fill(rate);
        let mut pipe_profile = ffi::rte_sched_pipe_params {
            tb_rate: rate,
            tb_size: 1_000_000,
            tc_period: 10,
            tc_ov_weight: 1,
            ..Default::default()
        };
        pipe_profile.tc_rate.fill(rate);
        pipe_profile.wrr_weights.fill(1);

        let mut port_params = ffi::rte_sched_port_params {
            name: name.as_ptr(),
            socket: eal.socket_id().max(0),
            rate,
            mtu: cfg.mtu,
            frame_overhead: cfg.frame_overhead,
            n_subports_per_port: 1,
            subport_profiles: &mut subport_profile,
            n_subport_profiles: 1,
            n_max_subport_profiles: 1,
            n_pipes_per_subport: cfg.pipes.next_power_of_two(),
        };
        // SAFETY: EAL is initialised; port_params and the profile it points to are valid for
        // the call (rte_sched copies what it keeps: name, profiles).
        let ptr = unsafe { ffi::rte_sched_port_config(&mut port_params) };
        let ptr = NonNull::new(ptr).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "rte_sched_port_config rejected the configuration {cfg:?} (see the DPDK log)"
            ))
        })?;

        // rte_sched wants a power-of-two number of enabled pipes: enable (and configure) the
        // rounded-up count; the pipes past `cfg.pipes` stay empty.
        let enabled = cfg.pipes.next_power_of_two();
        let mut subport = ffi::rte_sched_subport_params {
            n_pipes_per_subport_enabled: enabled,
            pipe_profiles: &mut pipe_profile,
            n_pipe_profiles: 1,
            n_max_pipe_profiles: 1,
            cman_params: std::ptr::null_mut(), // tail drop
            ..Default::default()
        };
        subport.qsize.fill(cfg.queue_size);
        // SAFETY: the port is valid; subport and the pipe profile it points to are valid for
        // the call and copied by rte_sched.
        let ret = unsafe { ffi::rte_sched_subport_config(ptr.as_ptr(), 0, &mut subport, 0) };
        if ret != 0 {
            // On failure rte_sched_subport_config frees the whole port itself
            // (rte_sched_free_memory): it must not be freed again, so no SchedPort exists yet.
            return Err(Error::rte("rte_sched_subport_config", ret));
        }
        let port = SchedPort {
            ptr,
            pipes: cfg.pipes,
            _eal: eal.clone(),
        };
        for pipe in 0..enabled {
            // SAFETY: the port and subport 0 are configured; pipe < enabled pipes; profile 0
            // exists. (A failing rte_sched_pipe_config leaves the port allocated: Drop frees.)
            let ret = unsafe { ffi::rte_sched_pipe_config(port.ptr.as_ptr(), 0, pipe, 0) };
            if ret != 0 {
                return Err(Error::rte("rte_sched_pipe_config", ret));
            }
        }
        Ok(port)
    }

    /// Number of pipes.
    pub fn pipes(&self) -> u32 {
        self.pipes
    }

    /// Marks `m` for `pipe`, traffic class 0, queue 0, green (`rte_sched_port_pkt_write`).
    #[inline]
    pub fn classify(&self, m: &mut Mbuf, pipe: u32) {
        debug_assert!(pipe < self.pipes);
        // SAFETY: the port is valid; m is an mbuf we own exclusively; the call only writes
        // the mbuf's scheduler metadata (hash.sched).
        unsafe {
            ffi::rte_sched_port_pkt_write(
                self.ptr.as_ptr(),
                m.as_ptr(),
                0,
                pipe % self.pipes,
                0,
                0,
                ffi::RTE_COLOR_GREEN,
            )
        }
    }

    /// Hands every mbuf of `batch` to the scheduler (`rte_sched_port_enqueue`); the batch is
    /// left empty. Returns how many were queued: the rest were dropped (queue full) and freed
    /// by the scheduler.
    #[inline]
    pub fn enqueue(&mut self, batch: &mut Batch<Mbuf>) -> usize {
        let n = batch.len();
        if n == 0 {
            return 0;
        }
        let mut ptrs = [std::ptr::null_mut::<ffi::rte_mbuf>(); MAX_BURST];
        for (slot, m) in ptrs.iter_mut().zip(batch.drain(..)) {
            *slot = m.into_raw().as_ptr();
        }
        // SAFETY: ptrs[..n] are valid mbufs classified for this port whose ownership passes to
        // the scheduler (queued, or freed when dropped).
        let queued =
            unsafe { ffi::rte_sched_port_enqueue(self.ptr.as_ptr(), ptrs.as_mut_ptr(), n as u32) };
        usize::try_from(queued).unwrap_or(0)
    }

    /// Appends up to `out.remaining_capacity()` scheduled mbufs (`rte_sched_port_dequeue`).
    #[inline]
    pub fn dequeue(&mut self, out: &mut Batch<Mbuf>) -> usize {
        let room = out.remaining_capacity();
        if room == 0 {
            return 0;
        }
        let mut ptrs = [std::ptr::null_mut::<ffi::rte_mbuf>(); MAX_BURST];
        // SAFETY: ptrs has room for `room` pointers; the port is valid.
        let got = unsafe {
            ffi::rte_sched_port_dequeue(self.ptr.as_ptr(), ptrs.as_mut_ptr(), room as u32)
        };
        let got = usize::try_from(got).unwrap_or(0).min(room);
        for &p in &ptrs[..got] {
            // SAFETY: each dequeued pointer is a non-NULL mbuf the scheduler hands back to us.
            out.push(unsafe { Mbuf::from_raw(NonNull::new_unchecked(p)) });
        }
        got
    }
}

impl Drop for SchedPort {
    fn drop(&mut self) {
        // SAFETY: the port was configured by rte_sched_port_config and is freed once; this
        // also frees the mbufs still queued.
        unsafe { ffi::rte_sched_port_free(self.ptr.as_ptr()) }
    }
}
