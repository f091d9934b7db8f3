//! Ethernet devices: [`PortId`], and [`EthPort`], the owner of one configured ethdev port.
//!
//! [`EthPort::configure`] runs the usual DPDK bring-up: `rte_eth_dev_configure` with N RX and
//! N TX queues, descriptor counts adjusted to the device's limits, one RX queue setup per
//! queue (fed from the given pool) and one TX queue setup per queue. [`EthPort::start`]
//! starts it. Dropping the port stops and closes it (`rte_eth_dev_stop`, `rte_eth_dev_close`),
//! which frees the mbufs still in its rings and, for a vdev like `net_pcap`, flushes and
//! closes its files. One [`EthPort`] per port per process: a second one fails with
//! [`Error::PortInUse`].

use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, Ordering};

use super::eal::Eal;
use super::error::{Error, Result};
use super::ffi;
use super::mempool::Mempool;

/// An ethdev port number, as DPDK assigns them (0..`RTE_MAX_ETHPORTS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortId(u16);

impl PortId {
    /// Wraps a raw port number (validity is checked when the port is configured).
    pub const fn new(id: u16) -> PortId {
        PortId(id)
    }

    /// The raw port number.
    pub const fn raw(self) -> u16 {
        self.0
    }
}

impl std::fmt::Display for PortId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "port{}", self.0)
    }
}

const MAX_PORTS: usize = ffi::RTE_MAX_ETHPORTS as usize;

/// Which ports an [`EthPort`] owns in this process.
static CLAIMED: [AtomicBool; MAX_PORTS] = [const { AtomicBool::new(false) }; MAX_PORTS];

/// How to configure a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EthConfig {
    /// RX queues (at least 1).
    pub rx_queues: u16,
    /// TX queues (at least 1; one link scheduler each).
    pub tx_queues: u16,
    /// Descriptors per RX queue (adjusted to the device's limits).
    pub rx_desc: u16,
    /// Descriptors per TX queue (adjusted to the device's limits). Keep it small for EDF
    /// ordering to matter: everything in the NIC ring is FIFO.
    pub tx_desc: u16,
    /// MTU to set, when not the device default (1500).
    pub mtu: Option<u16>,
    /// Receive every frame, not only those addressed to the port's MAC.
    pub promiscuous: bool,
}

impl Default for EthConfig {
    fn default() -> Self {
        EthConfig {
            rx_queues: 1,
            tx_queues: 1,
            rx_desc: 1024,
            tx_desc: 1024,
            mtu: None,
            promiscuous: false,
        }
    }
}

/// Link state (`rte_eth_link_get_nowait`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkStatus {
    /// The link is up.
    pub up: bool,
    /// Speed in Mb/s, `None` when the driver does not know it.
    pub speed_mbps: Option<u32>,
    /// Full duplex.
    pub full_duplex: bool,
    /// Autonegotiated.
    pub autoneg: bool,
}

/// Basic port counters (`rte_eth_stats_get`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EthStats {
    /// Packets received.
    pub ipackets: u64,
    /// Packets sent.
    pub opackets: u64,
    /// Bytes received.
    pub ibytes: u64,
    /// Bytes sent.
    pub obytes: u64,
    /// RX packets dropped by the hardware (RX ring full).
    pub imissed: u64,
    /// Erroneous received packets.
    pub ierrors: u64,
    /// Failed transmissions.
    pub oerrors: u64,
    /// RX mbuf allocation failures.
    pub rx_nombuf: u64,
}

/// A configured ethdev port, owned by this value.
pub struct EthPort {
    id: PortId,
    name: String,
    driver: String,
    rx_queues: u16,
    tx_queues: u16,
    rx_desc: u16,
    tx_desc: u16,
    started: bool,
    closed: bool,
    // Dropped after the port is closed (field order is irrelevant: Drop::drop runs first).
    rx_pool: Mempool,
    _eal: Eal,
}

impl std::fmt::Debug for EthPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EthPort")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("driver", &self.driver)
            .field("rx_queues", &self.rx_queues)
            .field("tx_queues", &self.tx_queues)
            .field("started", &self.started)
            .finish()
    }
}

/// Converts a DPDK `int` return into a result.
fn check(op: &'static str, ret: i32) -> Result<()> {
    if ret < 0 {
        Err(Error::rte(op, ret))
    } else {
        Ok(())
    }
}

impl EthPort {
    /// Configures `port` with `config`, its RX queues fed from `rx_pool`. Not started yet.
    pub fn configure(
        eal: &Eal,
        port: PortId,
        config: &EthConfig,
        rx_pool: &Mempool,
    ) -> Result<EthPort> {
        let id = port.raw();
        if usize::from(id) >= MAX_PORTS {
            return Err(Error::InvalidArgument(format!(
                "{port} is beyond RTE_MAX_ETHPORTS"
            )));
        }
        // SAFETY: EAL is initialised (eal exists); any port id is accepted.
        if unsafe { ffi::rte_eth_dev_is_valid_port(id) } == 0 {
            return Err(Error::InvalidArgument(format!(
                "{port} is not a valid DPDK port"
            )));
        }
        if config.rx_queues == 0 || config.tx_queues == 0 {
            return Err(Error::InvalidArgument(
                "a port needs at least one RX and one TX queue".into(),
            ));
        }
        if CLAIMED[usize::from(id)]
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(Error::PortInUse(id));
        }
        // From here the claim is released by EthPort's Drop (or explicitly on early error).
        let mut eth = EthPort {
            id: port,
            name: String::new(),
            driver: String::new(),
            rx_queues: config.rx_queues,
            tx_queues: config.tx_queues,
            rx_desc: config.rx_desc,
            tx_desc: config.tx_desc,
            started: false,
            closed: true, // nothing to close until rte_eth_dev_configure succeeded
            rx_pool: rx_pool.clone(),
            _eal: eal.clone(),
        };
        eth.name = port_name(id)?;
        let info = dev_info(id)?;
        // SAFETY: driver_name is a static string owned by the PMD (or NULL).
        eth.driver = unsafe { cstr_or_empty(info.driver_name) };
        if config.rx_queues > info.max_rx_queues || config.tx_queues > info.max_tx_queues {
            return Err(Error::InvalidArgument(format!(
                "{} supports at most {} RX / {} TX queues, asked for {} / {}",
                eth.name,
                info.max_rx_queues,
                info.max_tx_queues,
                config.rx_queues,
                config.tx_queues
            )));
        }

        // A failure after rte_eth_dev_configure leaves the port configured but not closed:
        // closing would release a vdev (or detach a PCI port) for good.
        match eth.setup(config) {
            Ok(()) => Ok(eth),
            Err(e) => {
                eth.closed = true;
                Err(e)
            }
        }
    }

    fn setup(&mut self, config: &EthConfig) -> Result<()> {
        let id = self.id.raw();
        let conf = ffi::rte_eth_conf::default();
        // SAFETY: valid port; conf is a fully initialised rte_eth_conf that DPDK copies.
        check("rte_eth_dev_configure", unsafe {
            ffi::rte_eth_dev_configure(id, config.rx_queues, config.tx_queues, &conf)
        })?;
        self.closed = false;

        // SAFETY: valid, configured port; both pointers are valid in/out u16s.
        check("rte_eth_dev_adjust_nb_rx_tx_desc", unsafe {
            ffi::rte_eth_dev_adjust_nb_rx_tx_desc(id, &mut self.rx_desc, &mut self.tx_desc)
        })?;
        if let Some(mtu) = config.mtu {
            // SAFETY: valid, configured, stopped port.
            check("rte_eth_dev_set_mtu", unsafe {
                ffi::rte_eth_dev_set_mtu(id, mtu)
            })?;
        }
        // SAFETY: valid port.
        let socket = unsafe { ffi::rte_eth_dev_socket_id(id) };
        let socket = u32::try_from(socket).unwrap_or(ffi::SOCKET_ID_ANY as u32);
        for q in 0..config.rx_queues {
            // SAFETY: valid, configured port; q < nb_rx_queues; NULL rxconf means the driver
            // default; the pool outlives the port (self.rx_pool holds it).
            check("rte_eth_rx_queue_setup", unsafe {
                ffi::rte_eth_rx_queue_setup(
                    id,
                    q,
                    self.rx_desc,
                    socket,
                    std::ptr::null(),
                    self.rx_pool.as_ptr(),
                )
            })?;
        }
        for q in 0..config.tx_queues {
            // SAFETY: valid, configured port; q < nb_tx_queues; NULL txconf = driver default.
            check("rte_eth_tx_queue_setup", unsafe {
                ffi::rte_eth_tx_queue_setup(id, q, self.tx_desc, socket, std::ptr::null())
            })?;
        }
        if config.promiscuous {
            // SAFETY: valid, configured port.
            check("rte_eth_promiscuous_enable", unsafe {
                ffi::rte_eth_promiscuous_enable(id)
            })?;
        }
        Ok(())
    }

    /// Stops the port and configures it again with `rx_queues` RX and `tx_queues` TX queues
    /// (descriptor counts and pool as before); not started. The daemon's way back to one
    /// queue pair per core when the device refuses the `rte_flow` rules the extra best-effort
    /// queue was for.
    pub fn reconfigure_queues(&mut self, rx_queues: u16, tx_queues: u16) -> Result<()> {
        if rx_queues == 0 || tx_queues == 0 {
            return Err(Error::InvalidArgument(
                "a port needs at least one RX and one TX queue".into(),
            ));
        }
        self.stop()?;
        let config = EthConfig {
            rx_queues,
            tx_queues,
            rx_desc: self.rx_desc,
            tx_desc: self.tx_desc,
            mtu: None,
            promiscuous: false,
        };
        self.setup(&config)?;
        self.rx_queues = rx_queues;
        self.tx_queues = tx_queues;
        Ok(())
    }

    /// The most RX and TX queues `port` can be configured with (`rte_eth_dev_info_get`).
    pub fn max_queues(_eal: &Eal, port: PortId) -> Result<(u16, u16)> {
        let info = dev_info(port.raw())?;
        Ok((info.max_rx_queues, info.max_tx_queues))
    }

    /// Per-queue packet and byte counters of queue `q` (`rte_eth_stats` keeps the first
    /// `RTE_ETHDEV_QUEUE_STAT_CNTRS` queues): `(rx packets, rx bytes, tx packets, tx bytes)`.
    pub fn queue_stats(&self, q: u16) -> Result<(u64, u64, u64, u64)> {
        let mut s = ffi::rte_eth_stats::default();
        // SAFETY: valid port owned by self; s is a valid out pointer.
        check("rte_eth_stats_get", unsafe {
            ffi::rte_eth_stats_get(self.id.raw(), &mut s)
        })?;
        let q = usize::from(q);
        if q >= s.q_ipackets.len() {
            return Err(Error::InvalidArgument(format!(
                "queue {q} is beyond the {} queues ethdev counts",
                s.q_ipackets.len()
            )));
        }
        Ok((
            s.q_ipackets[q],
            s.q_ibytes[q],
            s.q_opackets[q],
            s.q_obytes[q],
        ))
    }

    /// Starts the port (`rte_eth_dev_start`). Idempotent.
    pub fn start(&mut self) -> Result<()> {
        if self.started {
            return Ok(());
        }
        // SAFETY: the port is configured with all its queues set up, and owned by self.
        check("rte_eth_dev_start", unsafe {
            ffi::rte_eth_dev_start(self.id.raw())
        })?;
        self.started = true;
        Ok(())
    }

    /// Stops the port (`rte_eth_dev_stop`). Idempotent; the port can be started again.
    pub fn stop(&mut self) -> Result<()> {
        if !self.started {
            return Ok(());
        }
        // SAFETY: the port is started and owned by self; no burst runs concurrently (&mut).
        check("rte_eth_dev_stop", unsafe {
            ffi::rte_eth_dev_stop(self.id.raw())
        })?;
        self.started = false;
        Ok(())
    }

    /// Stops and closes the port now, reporting errors (dropping does the same silently).
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        let stopped = self.stop();
        // SAFETY: the port is owned by self and not used after this (closed is set).
        let closed = check("rte_eth_dev_close", unsafe {
            ffi::rte_eth_dev_close(self.id.raw())
        });
        self.closed = true;
        self.started = false;
        stopped.and(closed)
    }

    /// The port number.
    pub fn id(&self) -> PortId {
        self.id
    }

    /// The ethdev name (`net_pcap0`, `0000:3b:00.0`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The PMD's name (`net_pcap`, `net_i40e`).
    pub fn driver(&self) -> &str {
        &self.driver
    }

    /// Configured RX queues.
    pub fn rx_queues(&self) -> u16 {
        self.rx_queues
    }

    /// Configured TX queues.
    pub fn tx_queues(&self) -> u16 {
        self.tx_queues
    }

    /// RX descriptors per queue, after adjustment to the device's limits.
    pub fn rx_desc(&self) -> u16 {
        self.rx_desc
    }

    /// TX descriptors per queue, after adjustment to the device's limits.
    pub fn tx_desc(&self) -> u16 {
        self.tx_desc
    }

    /// The port is started.
    pub fn is_started(&self) -> bool {
        self.started
    }

    /// The pool RX queues take their mbufs from.
    pub fn rx_pool(&self) -> &Mempool {
        &self.rx_pool
    }

    /// Current link state, without waiting for autonegotiation.
    pub fn link(&self) -> Result<LinkStatus> {
        let mut link = ffi::rte_eth_link::default();
        // SAFETY: valid port owned by self; link is a valid out pointer.
        check("rte_eth_link_get_nowait", unsafe {
            ffi::rte_eth_link_get_nowait(self.id.raw(), &mut link)
        })?;
        let speed = link.link_speed;
        Ok(LinkStatus {
            up: u32::from(link.link_status()) == ffi::RTE_ETH_LINK_UP,
            speed_mbps: (speed != ffi::RTE_ETH_SPEED_NUM_UNKNOWN
                && speed != ffi::RTE_ETH_SPEED_NUM_NONE)
                .then_some(speed),
            full_duplex: u32::from(link.link_duplex()) == ffi::RTE_ETH_LINK_FULL_DUPLEX,
            autoneg: u32::from(link.link_autoneg()) == ffi::RTE_ETH_LINK_AUTONEG,
        })
    }

    /// Port counters.
    pub fn stats(&self) -> Result<EthStats> {
        let mut s = ffi::rte_eth_stats::default();
        // SAFETY: valid port owned by self; s is a valid out pointer.
        check("rte_eth_stats_get", unsafe {
            ffi::rte_eth_stats_get(self.id.raw(), &mut s)
        })?;
        Ok(EthStats {
            ipackets: s.ipackets,
            opackets: s.opackets,
            ibytes: s.ibytes,
            obytes: s.obytes,
            imissed: s.imissed,
            ierrors: s.ierrors,
            oerrors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        })
    }

    /// The driver's extended statistics (`rte_eth_xstats_get_names`, `rte_eth_xstats_get`),
    /// as (name, value) pairs. Control path: allocates.
    pub fn xstats(&self) -> Result<Vec<(String, u64)>> {
        let id = self.id.raw();
        // SAFETY: valid port owned by self; NULL with size 0 asks for the count.
        let n = unsafe { ffi::rte_eth_xstats_get_names(id, std::ptr::null_mut(), 0) };
        check("rte_eth_xstats_get_names", n)?;
        let n = n as usize;
        let mut names = vec![ffi::rte_eth_xstat_name::default(); n];
        let mut values = vec![ffi::rte_eth_xstat::default(); n];
        // SAFETY: names has room for n entries, as passed.
        let got = unsafe { ffi::rte_eth_xstats_get_names(id, names.as_mut_ptr(), n as u32) };
        check("rte_eth_xstats_get_names", got)?;
        // SAFETY: values has room for n entries, as passed.
        let got_v = unsafe { ffi::rte_eth_xstats_get(id, values.as_mut_ptr(), n as u32) };
        check("rte_eth_xstats_get", got_v)?;
        let (got, got_v) = ((got as usize).min(n), (got_v as usize).min(n));
        Ok(values[..got_v]
            .iter()
            .filter_map(|v| {
                let name = names.get(v.id as usize).filter(|_| (v.id as usize) < got)?;
                // SAFETY: DPDK wrote a NUL-terminated name into the fixed-size array.
                let name = unsafe { cstr_or_empty(name.name.as_ptr()) };
                Some((name, v.value))
            })
            .collect())
    }

    /// The port's MAC address.
    pub fn mac_addr(&self) -> Result<[u8; 6]> {
        let mut addr = ffi::rte_ether_addr::default();
        // SAFETY: valid port owned by self; addr is a valid out pointer.
        check("rte_eth_macaddr_get", unsafe {
            ffi::rte_eth_macaddr_get(self.id.raw(), &mut addr)
        })?;
        Ok(addr.addr_bytes)
    }

    /// The port's MTU (L3 payload size; the frame is 14 bytes longer).
    pub fn mtu(&self) -> Result<u16> {
        let mut mtu = 0u16;
        // SAFETY: valid port owned by self; mtu is a valid out pointer.
        check("rte_eth_dev_get_mtu", unsafe {
            ffi::rte_eth_dev_get_mtu(self.id.raw(), &mut mtu)
        })?;
        Ok(mtu)
    }
}

impl Drop for EthPort {
    fn drop(&mut self) {
        let _ = self.shutdown();
        CLAIMED[usize::from(self.id.raw())].store(false, Ordering::Release);
    }
}

/// `rte_eth_dev_get_name_by_port`.
fn port_name(id: u16) -> Result<String> {
    let mut buf = [0 as std::ffi::c_char; ffi::RTE_DEV_NAME_MAX_LEN as usize];
    // SAFETY: buf has RTE_ETH_NAME_MAX_LEN (= RTE_DEV_NAME_MAX_LEN) bytes, as required.
    check("rte_eth_dev_get_name_by_port", unsafe {
        ffi::rte_eth_dev_get_name_by_port(id, buf.as_mut_ptr())
    })?;
    // SAFETY: DPDK wrote a NUL-terminated string into buf.
    Ok(unsafe { cstr_or_empty(buf.as_ptr()) })
}

/// `rte_eth_dev_info_get`.
fn dev_info(id: u16) -> Result<ffi::rte_eth_dev_info> {
    let mut info = ffi::rte_eth_dev_info::default();
    // SAFETY: valid port; info is a valid out pointer.
    check("rte_eth_dev_info_get", unsafe {
        ffi::rte_eth_dev_info_get(id, &mut info)
    })?;
    Ok(info)
}

/// Copies a C string, `""` for NULL.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string.
unsafe fn cstr_or_empty(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: guaranteed by the caller.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}
