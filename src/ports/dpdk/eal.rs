//! The Environment Abstraction Layer: process-wide DPDK initialisation.
//!
//! `rte_eal_init` may run once per process: it parses the EAL arguments, reserves memory
//! (hugepages unless `--no-huge`), probes devices (`--vdev`, PCI unless `--no-pci`), loads
//! the PMD plugins, pins the calling thread to the main lcore and starts the worker lcores.
//! [`Eal::init`] enforces the once-per-process rule with a process-wide guard: a second call
//! (even after a failed first one, or after cleanup, which DPDK does not support either)
//! returns [`Error::AlreadyInitialised`].
//!
//! [`Eal`] is a cheap, cloneable handle. Pools and ports hold a clone, so `rte_eal_cleanup`
//! runs only when the last handle goes, after every pool and port was released.

use std::ffi::{c_char, c_int, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::error::{Error, Result};
use super::ethdev::PortId;
use super::ffi;

/// Set by the first [`Eal::init`] and never cleared: EAL initialisation is once per process.
static EAL_ATTEMPTED: AtomicBool = AtomicBool::new(false);

/// Program name passed as `argv[0]` to `rte_eal_init`.
const PROGRAM_NAME: &str = "rtchan";

/// Handle on the initialised EAL. Clone it freely; the last handle runs `rte_eal_cleanup`.
#[derive(Clone)]
pub struct Eal {
    inner: Arc<EalInner>,
}

struct EalInner {
    args: Vec<String>,
    /// EAL's runtime directory (`/var/run/dpdk/<file-prefix>` for root), removed after
    /// cleanup if EAL left it empty.
    runtime_dir: Option<std::path::PathBuf>,
    /// Set once `rte_eal_cleanup` ran (explicitly), so `Drop` does not run it twice.
    cleaned: AtomicBool,
}

impl std::fmt::Debug for Eal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eal")
            .field("args", &self.inner.args)
            .finish()
    }
}

impl Eal {
    /// Initialises DPDK's EAL with `args` (EAL options only, without the program name, e.g.
    /// `["-l", "0", "--in-memory", "--no-pci", "--vdev=net_null0"]`).
    ///
    /// The calling thread becomes the main lcore and is pinned to its CPU. Can succeed at most
    /// once per process: any later call returns [`Error::AlreadyInitialised`] without touching
    /// DPDK. Arguments after `--` (application arguments) are accepted and ignored.
    pub fn init<I, S>(args: I) -> Result<Eal>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let args: Vec<String> = args.into_iter().map(|s| s.as_ref().to_owned()).collect();
        let mut c_args = Vec::with_capacity(args.len() + 1);
        for arg in std::iter::once(PROGRAM_NAME).chain(args.iter().map(String::as_str)) {
            let c = CString::new(arg).map_err(|_| {
                Error::InvalidArgument(format!("EAL argument {arg:?} contains a NUL byte"))
            })?;
            c_args.push(c);
        }
        let argc = c_int::try_from(c_args.len())
            .map_err(|_| Error::InvalidArgument("too many EAL arguments".into()))?;

        if EAL_ATTEMPTED.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyInitialised);
        }

        // EAL permutes argv (getopt) and may keep pointers into it, so both the strings and
        // the array are leaked: this happens once per process.
        let mut argv: Vec<*mut c_char> = c_args.into_iter().map(CString::into_raw).collect();
        argv.push(std::ptr::null_mut());
        let argv: &'static mut [*mut c_char] = argv.leak();

        // SAFETY: argv holds argc valid NUL-terminated strings followed by NULL, all leaked
        // (valid for the rest of the process). The guard above ensures this is the only call
        // to rte_eal_init in the process.
        let ret = unsafe { ffi::rte_eal_init(argc, argv.as_mut_ptr()) };
        if ret < 0 {
            return Err(Error::from_rte_errno("rte_eal_init"));
        }
        // SAFETY: EAL is initialised; the call returns a pointer to a NUL-terminated string
        // in EAL's static storage (or NULL), valid until cleanup; it is copied at once.
        let dir = unsafe { ffi::rte_eal_get_runtime_dir() };
        let runtime_dir = (!dir.is_null()).then(|| {
            // SAFETY: non-NULL, NUL-terminated, alive (see above).
            let s = unsafe { std::ffi::CStr::from_ptr(dir) };
            std::path::PathBuf::from(s.to_string_lossy().into_owned())
        });
        Ok(Eal {
            inner: Arc::new(EalInner {
                args,
                runtime_dir,
                cleaned: AtomicBool::new(false),
            }),
        })
    }

    /// [`Eal::init`], then puts the calling thread's CPU affinity back as it was: EAL pins the
    /// calling thread to the main lcore, and every thread it spawns afterwards (a daemon's
    /// polling cores, its control thread) would inherit that one CPU.
    pub fn init_keep_affinity<I, S>(args: I) -> Result<Eal>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: pid 0 is the calling thread; set is a valid cpu_set_t of the size passed.
        let got =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        let eal = Eal::init(args)?;
        if got == 0 {
            // SAFETY: as above; set holds the mask read before rte_eal_init.
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        }
        Ok(eal)
    }

    /// The EAL arguments this process was initialised with (without the program name).
    pub fn args(&self) -> &[String] {
        &self.inner.args
    }

    /// Ports probed so far (`--vdev`, bound PCI devices, [`Eal::probe_device`]).
    pub fn ports(&self) -> Vec<PortId> {
        let max = ffi::RTE_MAX_ETHPORTS as u16;
        let mut ports = Vec::new();
        // SAFETY: EAL is initialised (self exists); rte_eth_find_next accepts any port id and
        // returns the next valid one or RTE_MAX_ETHPORTS.
        let mut next = unsafe { ffi::rte_eth_find_next(0) };
        while next < max {
            ports.push(PortId::new(next));
            // SAFETY: as above.
            next = unsafe { ffi::rte_eth_find_next(next + 1) };
        }
        ports
    }

    /// The port whose ethdev name is `name` (for a vdev, the name before the first comma of
    /// its `--vdev` argument, e.g. `net_pcap0`; for PCI, the address `0000:3b:00.0`).
    pub fn port_by_name(&self, name: &str) -> Result<PortId> {
        let c_name = CString::new(name)
            .map_err(|_| Error::InvalidArgument(format!("port name {name:?} contains NUL")))?;
        let mut id = 0u16;
        // SAFETY: EAL is initialised; c_name is NUL-terminated and id is a valid out pointer.
        let ret = unsafe { ffi::rte_eth_dev_get_port_by_name(c_name.as_ptr(), &mut id) };
        if ret < 0 {
            return Err(Error::NoSuchPort(name.to_owned()));
        }
        Ok(PortId::new(id))
    }

    /// Hot-plugs a device after initialisation (`rte_dev_probe`), e.g.
    /// `"net_null1"` or `"net_pcap1,iface=veth0"`; same syntax as `--vdev` or `-a`.
    /// Look the port up with [`Eal::port_by_name`] afterwards.
    pub fn probe_device(&self, devargs: &str) -> Result<()> {
        let c = CString::new(devargs)
            .map_err(|_| Error::InvalidArgument(format!("devargs {devargs:?} contain NUL")))?;
        // SAFETY: EAL is initialised; c is NUL-terminated and only read during the call.
        let ret = unsafe { ffi::rte_dev_probe(c.as_ptr()) };
        if ret < 0 {
            return Err(Error::rte("rte_dev_probe", ret));
        }
        Ok(())
    }

    /// NUMA socket of the calling thread's lcore (`SOCKET_ID_ANY`, -1, for non-EAL threads).
    pub fn socket_id(&self) -> i32 {
        // SAFETY: reads per-lcore state; valid on any thread once EAL is initialised.
        let id = unsafe { ffi::rte_socket_id() };
        i32::try_from(id).unwrap_or(ffi::SOCKET_ID_ANY)
    }

    /// The calling thread's lcore id (`None` for a thread EAL did not create or register).
    pub fn lcore_id(&self) -> Option<u32> {
        // SAFETY: reads a thread-local; valid on any thread.
        let id = unsafe { ffi::rte_lcore_id() };
        (id != u32::MAX).then_some(id)
    }

    /// Registers the calling thread with EAL (`rte_thread_register`) and returns its new lcore
    /// id. Threads DPDK did not create have no lcore id, so their mbuf alloc/free bypass the
    /// pools' per-lcore caches and go to the shared ring; a polling core should register
    /// itself (after pinning) to use them. Registering an already registered thread returns
    /// its id.
    pub fn register_thread(&self) -> Result<u32> {
        if let Some(id) = self.lcore_id() {
            return Ok(id);
        }
        // SAFETY: EAL is initialised; the call only touches the calling thread's state and
        // EAL's lcore table (under its own lock).
        let ret = unsafe { ffi::rte_thread_register() };
        if ret < 0 {
            return Err(Error::from_rte_errno("rte_thread_register"));
        }
        self.lcore_id()
            .ok_or_else(|| Error::from_rte_errno("rte_thread_register"))
    }

    /// Undoes [`Eal::register_thread`] for the calling thread (call before it exits, or its
    /// lcore id stays taken). Does nothing on a thread that is not registered.
    pub fn unregister_thread(&self) {
        if self.lcore_id().is_some() {
            // SAFETY: EAL is initialised; for a registered non-EAL thread this releases its
            // lcore id (EAL ignores the call for threads it created itself).
            unsafe { ffi::rte_thread_unregister() };
        }
    }

    /// EAL's runtime directory (`rte_eal_get_runtime_dir`), if it reported one.
    pub fn runtime_dir(&self) -> Option<&std::path::Path> {
        self.inner.runtime_dir.as_deref()
    }

    /// Runs `rte_eal_cleanup` now. Fails with [`Error::EalInUse`] (and does nothing) while
    /// other clones of this handle, pools or ports, are alive. Without an explicit call,
    /// cleanup runs when the last handle is dropped. EAL cannot be initialised again after.
    pub fn cleanup(self) -> Result<()> {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner.cleanup(),
            Err(shared) => Err(Error::EalInUse(Arc::strong_count(&shared) - 1)),
        }
    }
}

impl EalInner {
    fn cleanup(&self) -> Result<()> {
        if self.cleaned.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        // SAFETY: EAL was initialised by Eal::init; no pool or port is left (each holds an
        // Eal clone, and this is the last reference), so nothing uses EAL memory any more.
        let ret = unsafe { ffi::rte_eal_cleanup() };
        if ret < 0 {
            return Err(Error::rte("rte_eal_cleanup", ret));
        }
        // EAL removes its sockets but not their directory: one empty directory per process
        // would pile up under /var/run/dpdk. `remove_dir` leaves a non-empty one alone.
        if let Some(dir) = &self.runtime_dir {
            let _ = std::fs::remove_dir(dir);
        }
        Ok(())
    }
}

impl Drop for EalInner {
    fn drop(&mut self) {
        let _ = self.cleanup();
    }
}
