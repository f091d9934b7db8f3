//! The two hosts the demo's applications talk to: one daemon in this process on the in-memory
//! link (its sending core and its loopback receiving core are the two hosts), or two daemon
//! processes in two network namespaces joined by a veth pair, af_packet on each end, peered
//! over TCP on the veth's addresses (as tests/daemon_netns.rs runs them).
//!
//! Both daemons' control sockets live in this run's directory: Unix sockets are not
//! network-namespaced, so the applications (in this process's namespace) reach either.

use super::{DemoError, NETWORK_AND_RECEIVE_BOUND, VETH_NETWORK_AND_RECEIVE_BOUND};
use crate::daemon::client::Client as Ctl;
use crate::daemon::Daemon;
use crate::ports::netns::{ip, is_root, mac_string, Namespaces};
use control::admission::ResourceModel;
use control::config::DaemonConfig;
use control::protocol::{ChannelList, Request};
use dataplane::core::CoreConfig;
use dataplane::time::Nanos;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the hosts' daemons are and how channels reach the receiving one.
pub(super) struct Hosts {
    /// The sending host's control socket (the senders and the flood open there).
    pub send: PathBuf,
    /// The receiving host's (the receivers attach there).
    pub recv: PathBuf,
    /// The channels' destination as the sending daemon names it.
    pub dst: String,
    /// The network's and the receiving host's share of D.
    pub net_and_rx: Nanos,
    /// Processes whose polling threads are on every message's path, with how many each has.
    pub polling: Vec<(u32, usize)>,
    /// The sending host's and the receiving host's resource models (what admission charged).
    pub models: (ResourceModel, ResourceModel),
    /// The daemons, stopped by [`Hosts::stop`].
    daemons: Daemons,
    /// The namespaces (veth), deleted after the daemons stopped.
    _namespaces: Option<Namespaces>,
    /// The run's directory, removed last.
    _dir: RunDir,
}

enum Daemons {
    InProcess(Box<Daemon>),
    Processes(Vec<DaemonProc>),
}

impl Hosts {
    /// Stops the daemons (SIGTERM for processes; drains their channels); the first problem.
    pub fn stop(self) -> Result<(), DemoError> {
        match self.daemons {
            Daemons::InProcess(d) => {
                d.shutdown();
                Ok(())
            }
            Daemons::Processes(ds) => {
                // Every one is stopped, whatever the first did.
                let stopped: Vec<_> = ds.into_iter().map(DaemonProc::stop).collect();
                stopped.into_iter().collect()
            }
        }
    }
}

/// Both hosts' `[policy]` and `[cost]` sections: the scheduling policy a scenario's core
/// configuration asks for, conservative per-message and per-packet costs for a laptop core,
/// idle loops that sleep 20 µs (room for the applications on a two-core machine).
pub(super) struct Policy(String);

impl Policy {
    /// The policy of `core` (granularity, early work run or held, best-effort reserve).
    pub(super) fn of(core: &CoreConfig) -> Self {
        Self(format!(
            r#"
[policy]
granularity = {}
work_conserving = {}
best_effort_reserve_ppm = {}
idle = "sleep"
idle_sleep = "20us"
[cost]
per_message_ns = 2000
per_packet_ns = 1000
best_effort_run_ns = 6000
"#,
            core.sched.granularity, core.sched.work_conserving, core.sched.best_effort_reserve_ppm
        ))
    }
}

/// `cpu = N` lines pinning the daemon's core: the sending host's to the last CPU, the
/// receiving host's to the first (with `key`), when there are two or more.
fn pin(key: &str, cpus: &[usize], last: bool) -> String {
    match cpus {
        [first, .., l] => format!("{key} = {}\n", if last { l } else { first }),
        _ => String::new(),
    }
}

/// One daemon in this process on the in-memory link at `link_bps`.
pub(super) fn memlink(link_bps: u64, cpus: &[usize], policy: &Policy) -> Result<Hosts, DemoError> {
    let dir = RunDir::new()?;
    let cfg = parse(&format!(
        r#"socket = "{dir}/rtchand.sock"
socket_mode = "0600"
{policy}link_rate_bps = {link_bps}
[port]
kind = "memlink"
fifo_packets = 256
buffers = 16384
[[cores]]
{}{}"#,
        pin("cpu", cpus, true),
        pin("rx_cpu", cpus, false),
        dir = dir.0.display(),
        policy = policy.0,
    ))?;
    let models = (cfg.tx_model(), cfg.rx_model());
    // The daemon's threads inherit the nice value of the thread that starts them: -20 when
    // allowed (as docs/deploy.md runs a daemon on a shared machine), while this process's
    // own thread and the applications it spawns keep the ordinary priority.
    let (daemon, raised) = std::thread::spawn(move || {
        let raised = dataplane::core::raise_priority();
        (Daemon::start(cfg), raised)
    })
    .join()
    .map_err(|_| DemoError::Daemon("the thread starting it panicked".into()))?;
    let daemon = daemon.map_err(|e| DemoError::Daemon(crate::daemon::one_line(&e)))?;
    if let Err(e) = raised {
        println!(
            "note: the daemon's polling threads run at normal priority ({e}); under other load \
             their deadlines depend on the OS scheduler"
        );
    }
    Ok(Hosts {
        send: daemon.socket.clone(),
        recv: daemon.socket.clone(),
        dst: "local".into(),
        net_and_rx: NETWORK_AND_RECEIVE_BOUND,
        polling: vec![(std::process::id(), 2)],
        models,
        daemons: Daemons::InProcess(Box::new(daemon)),
        _namespaces: None,
        _dir: dir,
    })
}

fn parse(text: &str) -> Result<DaemonConfig, DemoError> {
    DaemonConfig::parse(text).map_err(|e| DemoError::Daemon(crate::daemon::one_line(&e)))
}

/// The MACs of the sending and the receiving host's veth ends.
const MACS: [[u8; 6]; 2] = [
    [0x02, 0x72, 0x74, 0, 2, 0x0a],
    [0x02, 0x72, 0x74, 0, 2, 0x0b],
];
/// The peering port (inside each namespace).
const PEER_PORT: u16 = 7411;
/// The network's share of D in the daemons' `[[peers]]`: a TPACKET_V3 block reaches user
/// space when full or when its 1 ms retire timer fires (up to a 4 ms jiffy later), and the
/// veth's softirq work shares this machine's CPUs. The rest of
/// [`VETH_NETWORK_AND_RECEIVE_BOUND`] is the receiving host's.
const VETH_NETWORK_BOUND: &str = "5ms";

/// Two daemon processes (`exe --config FILE`) in two fresh network namespaces joined by a veth
/// pair, af_packet paced at `link_bps`, the sender's core on the last CPU, the receiver's on
/// the first. [`DemoError::Veth`] when the namespaces cannot be made (not root).
pub(super) fn veth(
    exe: &Path,
    link_bps: u64,
    cpus: &[usize],
    policy: &Policy,
) -> Result<Hosts, DemoError> {
    if !is_root() {
        return Err(DemoError::Veth("network namespaces need root".into()));
    }
    let dir = RunDir::new()?;
    let pid = std::process::id();
    let ns = [
        format!("rtchan-demo-s-{pid}"),
        format!("rtchan-demo-r-{pid}"),
    ];
    let ifs = [format!("rdemos{pid}"), format!("rdemor{pid}")];
    // A private /30 inside the namespaces this run made: .1 the sender, .2 the receiver.
    let net = format!("10.205.{}", pid % 256);
    let ips = [format!("{net}.1"), format!("{net}.2")];
    let mut namespaces = Namespaces::default();
    namespaces
        .veth_pair((&ns[0], &ifs[0], MACS[0]), (&ns[1], &ifs[1], MACS[1]))
        .map_err(DemoError::Veth)?;
    for i in 0..2 {
        ip(&[
            "-n",
            &ns[i],
            "addr",
            "add",
            &format!("{}/30", ips[i]),
            "dev",
            &ifs[i],
        ])
        .map_err(DemoError::Veth)?;
    }
    let names = ["send", "recv"];
    let mut daemons = Vec::new();
    let mut models = Vec::new();
    for i in 0..2 {
        let o = 1 - i;
        let text = format!(
            r#"socket = "{dir}/{name}.sock"
socket_mode = "0600"
{policy}
[port]
kind = "af_packet"
device = "{dev}"
link_rate_bps = {link_bps}
buffers = 16384
rx_block_size = 4096
rx_blocks = 1024
rx_block_timeout_ms = 1
[[cores]]
{pin}
[peering]
name = "{name}"
listen = "{ip}:{PEER_PORT}"
[[peers]]
name = "{peer}"
address = "{peer_ip}:{PEER_PORT}"
network_bound = "{VETH_NETWORK_BOUND}"
mac = "{peer_mac}"
"#,
            dir = dir.0.display(),
            name = names[i],
            dev = ifs[i],
            pin = pin("cpu", cpus, i == 0),
            ip = ips[i],
            peer = names[o],
            peer_ip = ips[o],
            peer_mac = mac_string(MACS[o]),
            policy = policy.0,
        );
        // Checked here, so that a bad file is this process's error, not a daemon's log line.
        let cfg = parse(&text)?;
        models.push(if i == 0 {
            cfg.tx_model()
        } else {
            cfg.rx_model()
        });
        daemons.push(DaemonProc::start(exe, names[i], &ns[i], &dir.0, &text)?);
    }
    Ok(Hosts {
        send: daemons[0].socket.clone(),
        recv: daemons[1].socket.clone(),
        dst: "recv".into(),
        net_and_rx: VETH_NETWORK_AND_RECEIVE_BOUND,
        polling: daemons.iter().map(|d| (d.child.id(), 1)).collect(),
        models: (models.remove(0), models.remove(0)),
        daemons: Daemons::Processes(daemons),
        _namespaces: Some(namespaces),
        _dir: dir,
    })
}

/// A daemon process of this run: `ip netns exec NS nice -n -20 EXE --config FILE`, its output
/// in `NAME.log`; killed on drop if still running.
struct DaemonProc {
    name: &'static str,
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    stopped: bool,
}

/// How long a daemon may take to answer after its start, or to stop after SIGTERM.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(20);

impl DaemonProc {
    fn start(
        exe: &Path,
        name: &'static str,
        ns: &str,
        dir: &Path,
        config: &str,
    ) -> Result<Self, DemoError> {
        let err = |m: String| DemoError::Daemon(format!("{name}: {m}"));
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, config).map_err(|e| err(format!("{}: {e}", cfg.display())))?;
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(|e| err(format!("{}: {e}", log.display())))?;
        let out2 = out.try_clone().map_err(|e| err(e.to_string()))?;
        // nice -20: on a shared machine the polling core must not wait behind other
        // processes for whole scheduler slices (its idle loop sleeps, so the softirq still
        // runs). `ip netns exec` and `nice` exec, so the child's pid is the daemon's.
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "nice", "-n", "-20"])
            .arg(exe)
            .arg("--config")
            .arg(&cfg)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(out2))
            .spawn()
            .map_err(|e| err(format!("cannot run ip netns exec: {e}")))?;
        let mut d = Self {
            name,
            child,
            socket: dir.join(format!("{name}.sock")),
            log,
            stopped: false,
        };
        let started = Instant::now();
        loop {
            if let Ok(Some(st)) = d.child.try_wait() {
                d.stopped = true;
                return Err(err(format!("exited at start ({st}): {}", d.log_text())));
            }
            let listed = Ctl::connect(&d.socket)
                .ok()
                .and_then(|mut c| c.call(&Request::List).ok())
                .is_some_and(|r| r.into_result::<ChannelList>().is_ok());
            if listed {
                return Ok(d);
            }
            if started.elapsed() > DAEMON_TIMEOUT {
                return Err(err(format!("did not answer: {}", d.log_text())));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// SIGTERM (it drains and stops), then waits for a clean exit.
    fn stop(mut self) -> Result<(), DemoError> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let started = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.stopped = true;
                return if st.success() {
                    Ok(())
                } else {
                    Err(DemoError::Daemon(format!(
                        "{} exited with {st}: {}",
                        self.name,
                        self.log_text()
                    )))
                };
            }
            if started.elapsed() > DAEMON_TIMEOUT {
                return Err(DemoError::Daemon(format!(
                    "{} did not stop on SIGTERM",
                    self.name
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A directory of this run for the daemons' sockets, configurations and logs, removed when
/// dropped.
struct RunDir(PathBuf);

impl RunDir {
    fn new() -> Result<Self, DemoError> {
        let d = std::env::temp_dir().join(format!("rtchan-demo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d)
            .map_err(|e| DemoError::Daemon(format!("{}: {e}", d.display())))?;
        Ok(Self(d))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
