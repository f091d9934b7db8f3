//! Receive steering in the NIC: a thin safe layer over `rte_flow` ([`Rule`], [`Flow`],
//! [`validate`], [`create`], [`flush`]) and [`FlowSteering`], the rules the daemon's port keeps.
//!
//! A [`Rule`] describes one match and the RX queue its frames go to; it is turned into
//! DPDK's pattern and action arrays only for the call (`Built` owns the spec and mask
//! structures, `Arrays` borrows it, so nothing the arrays point to can move meanwhile). A
//! created rule is a [`Flow`]: dropping it destroys the rule (`rte_flow_destroy`). Errors carry the PMD's own `rte_flow_error` message, which is
//! usually the only place saying what the device could not do.
//!
//! The rules the daemon makes (see [`FlowSteering`] and `docs/ports.md`, "Receive steering"):
//! - per channel, where the device can match the rtchan header (a RAW item 8 bytes into the
//!   UDP payload, the channel field): `ETH / IPV4 / UDP dst = port / RAW channel → QUEUE` of
//!   the receiver's core (a real-time channel) or of the best-effort queue (a best-effort
//!   channel), priority [`PRIO_CHANNEL`];
//! - where it cannot: `ETH / IPV4 / UDP dst = port → QUEUE` of the core holding most
//!   real-time receivers, priority [`PRIO_PORT`], or 0 where the device has no priority
//!   levels (the software hand-off moves the rest);
//! - everything else: `ETH → QUEUE` best-effort queue, priority [`PRIO_ANY`], where the
//!   device takes a catch-all; where it does not, unmatched frames reach the device's default
//!   queue, which the daemon makes the best-effort queue (queue 0, no RSS configured).
//!
//! Rules change only on the control thread ([`FlowSteering::steer`], called from
//! `Dataplane::steer`); the polling cores never call `rte_flow`.

use std::collections::HashMap;
use std::ffi::CStr;
use std::ptr::NonNull;

use dataplane::spec::ChannelId;

use super::error::{Error, Result};
use super::ethdev::PortId;
use super::ffi;

/// Where the channel id sits after the UDP header: the rtchan header's `channel` field (see
/// [`peek_channel`](crate::ports::steering::peek_channel)).
pub const CHANNEL_OFFSET: i32 = 8;

/// Priority of the per-channel rules (0 is the highest).
pub const PRIO_CHANNEL: u32 = 0;
/// Priority of the rtchan UDP port rule.
pub const PRIO_PORT: u32 = 1;
/// Priority of the catch-all rule (best-effort queue).
pub const PRIO_ANY: u32 = 2;

// A channel's rule wins over the port rule, which wins over the catch-all.
const _: () = assert!(PRIO_CHANNEL < PRIO_PORT && PRIO_PORT < PRIO_ANY);

/// What a rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    /// Every Ethernet frame (`ETH` with no spec).
    Any,
    /// IPv4/UDP frames to this destination port.
    UdpPort(u16),
    /// IPv4/UDP frames to `udp_port` whose rtchan header names `channel`.
    Channel {
        /// Destination UDP port.
        udp_port: u16,
        /// The rtchan channel id.
        channel: ChannelId,
    },
}

/// One ingress rule: `matches` → RX queue `queue`, at `priority`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The pattern.
    pub matches: Match,
    /// The RX queue (QUEUE action).
    pub queue: u16,
    /// Priority level within group 0 (0 highest).
    pub priority: u32,
}

/// The spec and mask structures a rule's arrays point into.
#[derive(Default)]
struct Store {
    udp_spec: ffi::rte_flow_item_udp,
    udp_mask: ffi::rte_flow_item_udp,
    raw_spec: ffi::rte_flow_item_raw,
    raw_mask: ffi::rte_flow_item_raw,
    channel: [u8; 4],
    channel_mask: [u8; 4],
    queue: ffi::rte_flow_action_queue,
}

/// A rule's attributes and the structures its pattern and actions point into; movable, since
/// nothing points into it until [`Built::arrays`] borrows it.
pub(crate) struct Built {
    attr: ffi::rte_flow_attr,
    store: Store,
    udp: bool,
    channel: bool,
}

/// A rule as DPDK takes it: attributes, the END-terminated pattern and action arrays, whose
/// pointers are valid while the [`Built`] they borrow is.
pub(crate) struct Arrays<'a> {
    attr: ffi::rte_flow_attr,
    items: Vec<ffi::rte_flow_item>,
    actions: [ffi::rte_flow_action; 2],
    _built: std::marker::PhantomData<&'a Built>,
}

fn item(type_: ffi::rte_flow_item_type) -> ffi::rte_flow_item {
    ffi::rte_flow_item {
        type_,
        ..Default::default()
    }
}

impl Rule {
    pub(crate) fn build(&self) -> Built {
        let mut store = Store::default();
        let mut attr = ffi::rte_flow_attr {
            priority: self.priority,
            ..Default::default()
        };
        attr.set_ingress(1);
        store.queue.index = self.queue;
        let (udp_port, channel) = match self.matches {
            Match::Any => (None, None),
            Match::UdpPort(p) => (Some(p), None),
            Match::Channel { udp_port, channel } => (Some(udp_port), Some(channel)),
        };
        if let Some(p) = udp_port {
            store.udp_spec.hdr.dst_port = p.to_be();
            store.udp_mask.hdr.dst_port = 0xffff;
        }
        if let Some(c) = channel {
            store.channel = c.to_be_bytes();
            store.channel_mask = [0xff; 4];
            let raw = &mut store.raw_spec;
            raw.set_relative(1);
            raw.offset = CHANNEL_OFFSET;
            raw.length = 4;
            let mask = &mut store.raw_mask;
            mask.set_relative(1);
            mask.set_search(1);
            mask.offset = -1; // every bit of offset, limit and length
            mask.limit = 0xffff;
            mask.length = 0xffff;
        }
        Built {
            attr,
            store,
            udp: udp_port.is_some(),
            channel: channel.is_some(),
        }
    }
}

impl Built {
    /// The arrays, pointing into `self` (borrowed as long as they live: it cannot move).
    pub(crate) fn arrays(&mut self) -> Arrays<'_> {
        // The RAW items' byte strings are the store's own arrays.
        self.store.raw_spec.pattern = self.store.channel.as_ptr();
        self.store.raw_mask.pattern = self.store.channel_mask.as_ptr();
        let s: &Store = &self.store;
        let mut items = vec![item(ffi::RTE_FLOW_ITEM_TYPE_ETH)];
        if self.udp {
            // IPv4 with no spec: any IPv4 header; the UDP item below implies protocol 17.
            items.push(item(ffi::RTE_FLOW_ITEM_TYPE_IPV4));
            items.push(ffi::rte_flow_item {
                type_: ffi::RTE_FLOW_ITEM_TYPE_UDP,
                spec: std::ptr::from_ref(&s.udp_spec).cast(),
                last: std::ptr::null(),
                mask: std::ptr::from_ref(&s.udp_mask).cast(),
            });
        }
        if self.channel {
            items.push(ffi::rte_flow_item {
                type_: ffi::RTE_FLOW_ITEM_TYPE_RAW,
                spec: std::ptr::from_ref(&s.raw_spec).cast(),
                last: std::ptr::null(),
                mask: std::ptr::from_ref(&s.raw_mask).cast(),
            });
        }
        items.push(item(ffi::RTE_FLOW_ITEM_TYPE_END));
        Arrays {
            attr: self.attr,
            items,
            actions: [
                ffi::rte_flow_action {
                    type_: ffi::RTE_FLOW_ACTION_TYPE_QUEUE,
                    conf: std::ptr::from_ref(&s.queue).cast(),
                },
                ffi::rte_flow_action {
                    type_: ffi::RTE_FLOW_ACTION_TYPE_END,
                    conf: std::ptr::null(),
                },
            ],
            _built: std::marker::PhantomData,
        }
    }
}

/// A created rule; dropping it destroys the rule.
#[derive(Debug)]
pub struct Flow {
    port: PortId,
    raw: NonNull<ffi::rte_flow>,
    rule: Rule,
}

// SAFETY: the handle is an opaque pointer DPDK hands back for use with rte_flow_destroy on
// this port; ethdev serialises rte_flow calls of a PMD that is not thread-safe with its own
// per-port mutex, so it may be destroyed from any thread (the daemon's control thread).
unsafe impl Send for Flow {}

impl Flow {
    /// The rule this flow was created from.
    pub fn rule(&self) -> &Rule {
        &self.rule
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        let mut e = ffi::rte_flow_error::default();
        // SAFETY: raw came from rte_flow_create on this port and is destroyed only here,
        // once. If the port was closed meanwhile, ethdev checks the port id and fails with
        // ENODEV instead of touching the rule.
        let _ = unsafe { ffi::rte_flow_destroy(self.port.raw(), self.raw.as_ptr(), &mut e) };
    }
}

/// An `rte_flow` error: the call's return code and the PMD's message.
fn flow_error(op: &'static str, code: i32, e: &ffi::rte_flow_error) -> Error {
    let message = if e.message.is_null() {
        super::error::strerror(code.saturating_abs())
    } else {
        // SAFETY: a non-NULL message is a NUL-terminated constant string of the PMD, valid
        // while the port is configured (it is); copied out at once.
        unsafe { CStr::from_ptr(e.message) }
            .to_string_lossy()
            .into_owned()
    };
    Error::Flow {
        op,
        errno: code.saturating_abs(),
        cause: error_type_name(e.type_),
        message,
    }
}

/// The name of an `rte_flow_error_type` (what part of the rule the PMD refused).
pub fn error_type_name(t: ffi::rte_flow_error_type) -> &'static str {
    match t {
        ffi::RTE_FLOW_ERROR_TYPE_NONE => "none",
        ffi::RTE_FLOW_ERROR_TYPE_HANDLE => "handle",
        ffi::RTE_FLOW_ERROR_TYPE_ATTR_GROUP => "attribute group",
        ffi::RTE_FLOW_ERROR_TYPE_ATTR_PRIORITY => "attribute priority",
        ffi::RTE_FLOW_ERROR_TYPE_ATTR_INGRESS => "attribute ingress",
        ffi::RTE_FLOW_ERROR_TYPE_ATTR_EGRESS => "attribute egress",
        ffi::RTE_FLOW_ERROR_TYPE_ATTR_TRANSFER => "attribute transfer",
        ffi::RTE_FLOW_ERROR_TYPE_ATTR => "attributes",
        ffi::RTE_FLOW_ERROR_TYPE_ITEM_NUM => "pattern length",
        ffi::RTE_FLOW_ERROR_TYPE_ITEM_SPEC => "item spec",
        ffi::RTE_FLOW_ERROR_TYPE_ITEM_LAST => "item range",
        ffi::RTE_FLOW_ERROR_TYPE_ITEM_MASK => "item mask",
        ffi::RTE_FLOW_ERROR_TYPE_ITEM => "pattern item",
        ffi::RTE_FLOW_ERROR_TYPE_ACTION_NUM => "number of actions",
        ffi::RTE_FLOW_ERROR_TYPE_ACTION_CONF => "action configuration",
        ffi::RTE_FLOW_ERROR_TYPE_ACTION => "action",
        ffi::RTE_FLOW_ERROR_TYPE_STATE => "device state",
        _ => "unspecified",
    }
}

/// Whether `port` would accept `rule` (`rte_flow_validate`). The port must be configured.
pub fn validate(port: PortId, rule: &Rule) -> Result<()> {
    let mut built = rule.build();
    let b = built.arrays();
    let mut e = ffi::rte_flow_error::default();
    // SAFETY: attr, the END-terminated pattern and action arrays and everything they point
    // to (`built`, borrowed by `b`) live until the call returns; DPDK only reads them. Any
    // port id is checked by ethdev.
    let r = unsafe {
        ffi::rte_flow_validate(
            port.raw(),
            &b.attr,
            b.items.as_ptr(),
            b.actions.as_ptr(),
            &mut e,
        )
    };
    if r < 0 {
        return Err(flow_error("rte_flow_validate", r, &e));
    }
    Ok(())
}

/// Creates `rule` on `port` (`rte_flow_create`).
pub fn create(port: PortId, rule: &Rule) -> Result<Flow> {
    let mut built = rule.build();
    let b = built.arrays();
    let mut e = ffi::rte_flow_error::default();
    // SAFETY: as in `validate`; DPDK copies what it keeps of the rule.
    let raw = unsafe {
        ffi::rte_flow_create(
            port.raw(),
            &b.attr,
            b.items.as_ptr(),
            b.actions.as_ptr(),
            &mut e,
        )
    };
    match NonNull::new(raw) {
        Some(raw) => Ok(Flow {
            port,
            raw,
            rule: *rule,
        }),
        None => Err(flow_error(
            "rte_flow_create",
            super::error::last_rte_errno(),
            &e,
        )),
    }
}

/// Destroys every rule of `port` (`rte_flow_flush`). [`Flow`]s of the port must be forgotten
/// (`std::mem::forget`) or dropped after this, their destroy failing harmlessly.
pub fn flush(port: PortId) -> Result<()> {
    let mut e = ffi::rte_flow_error::default();
    // SAFETY: e is a valid out structure; ethdev checks the port id.
    let r = unsafe { ffi::rte_flow_flush(port.raw(), &mut e) };
    if r < 0 {
        return Err(flow_error("rte_flow_flush", r, &e));
    }
    Ok(())
}

/// How received frames reach their receiver's core on a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SteeringMode {
    /// One rule per placed channel: no software hand-off in steady state.
    FlowPerChannel,
    /// One rule for the rtchan UDP port (the device cannot match the channel); the software
    /// hand-off moves frames of channels on other cores. The reason the channel rule was
    /// refused.
    FlowPort(String),
    /// No rules: the software hand-off between cores. Why (`rte_flow refused: ...`, or why
    /// rules were not tried).
    Software(String),
}

impl Default for SteeringMode {
    fn default() -> Self {
        SteeringMode::Software(String::new())
    }
}

impl SteeringMode {
    /// A short name: `flow-channel`, `flow-port`, `software`.
    pub fn name(&self) -> &'static str {
        match self {
            SteeringMode::FlowPerChannel => "flow-channel",
            SteeringMode::FlowPort(_) => "flow-port",
            SteeringMode::Software(_) => "software",
        }
    }

    /// The one line the daemon logs, and `rtchanctl stats` shows.
    pub fn describe(&self) -> String {
        match self {
            SteeringMode::FlowPerChannel => "rte_flow: one rule per channel to its receiver's \
                 core's RX queue (core i reads queue i+1); best-effort and other frames to RX \
                 queue 0, read by the last core after its own"
                .into(),
            SteeringMode::FlowPort(why) => format!(
                "rte_flow: the rtchan UDP port to the RX queue of the core with most real-time \
                 receivers (core i reads queue i+1), software hand-off for the rest; other \
                 frames to RX queue 0, read by the last core after its own (channel match \
                 refused: {why})"
            ),
            SteeringMode::Software(why) => format!("software hand-off between cores ({why})"),
        }
    }
}

/// The rules of the daemon's port, kept in step with the receivers the control thread places.
///
/// RX queue layout with rules: queue 0 is the best-effort queue (the device's default queue
/// too, so frames no rule matches land there even where the catch-all rule is refused),
/// core `i` receives on queue `i + 1`.
#[derive(Debug)]
pub struct FlowSteering {
    port: PortId,
    udp_port: u16,
    cores: u16,
    per_channel: bool,
    /// Per-channel rules, and for every placed channel its core and class.
    channels: HashMap<ChannelId, (u16, bool, Option<Flow>)>,
    port_rule: Option<Flow>,
    /// The priority the device took the port rule at.
    port_prio: u32,
    _any: Option<Flow>,
    create_failures: u64,
}

/// `rule` if the device takes it, else the same rule at priority 0 (i40e's flow director, for
/// one, has no priority levels): the rule that validated, or the first refusal. Only for a
/// rule that never shares the device with another rule it overlaps at priority 0.
fn validate_or_at_zero(port: PortId, rule: Rule) -> Result<Rule> {
    match validate(port, &rule) {
        Ok(()) => Ok(rule),
        Err(e) if rule.priority != 0 => {
            let zero = Rule {
                priority: 0,
                ..rule
            };
            validate(port, &zero).map(|()| zero).map_err(|_| e)
        }
        Err(e) => Err(e),
    }
}

/// The core the port rule sends rtchan frames to, of `cores`, given the placed channels'
/// `(core, best_effort)`: the first core with the most real-time receivers, core 0 when there
/// are none (best-effort receivers do not count: their frames may wait).
fn port_rule_core(cores: u16, placed: impl Iterator<Item = (u16, bool)>) -> u16 {
    let mut n = vec![0usize; usize::from(cores)];
    for (core, be) in placed {
        if !be && core < cores {
            n[usize::from(core)] += 1;
        }
    }
    (0..cores)
        .max_by_key(|&c| (n[usize::from(c)], std::cmp::Reverse(c)))
        .unwrap_or(0)
}

/// The best-effort RX queue when rules steer.
pub const BE_QUEUE: u16 = 0;

/// The RX queue of core `core` when rules steer.
pub fn core_queue(core: u16) -> u16 {
    core + 1
}

impl FlowSteering {
    /// Installs the static rules on the configured port `port` (RX queues 0..=cores, see the
    /// type's docs): the catch-all to [`BE_QUEUE`] where the device takes it, and, unless it
    /// can match channels, the rtchan port rule to core 0's queue. `Err`: the device refused
    /// the rtchan port rule itself; nothing stays installed.
    pub fn install(port: PortId, cores: u16, udp_port: u16) -> Result<(Self, SteeringMode)> {
        let port_rule = validate_or_at_zero(
            port,
            Rule {
                matches: Match::UdpPort(udp_port),
                queue: core_queue(0),
                priority: PRIO_PORT,
            },
        )?;
        let channel_rule = Rule {
            matches: Match::Channel {
                udp_port,
                channel: 0,
            },
            queue: core_queue(0),
            priority: PRIO_CHANNEL,
        };
        let channel_ok = validate(port, &channel_rule);
        if let Err(e) = &channel_ok {
            // Said even when a later rule fails: it is what the device can match.
            eprintln!(
                "rtchand: dpdk: no per-channel rules, the channel match (a RAW item after UDP) \
                 is refused: {e}"
            );
        }
        let (per_channel, port_flow, mode) = match channel_ok {
            Ok(()) => {
                // Made once and destroyed at once: a device that validates what it cannot
                // create (net_tap without the kernel's tc support) falls back here.
                drop(create(port, &channel_rule)?);
                (true, None, SteeringMode::FlowPerChannel)
            }
            Err(e) => (
                false,
                Some(create(port, &port_rule)?),
                SteeringMode::FlowPort(e.to_string()),
            ),
        };
        let any = Rule {
            matches: Match::Any,
            queue: BE_QUEUE,
            priority: PRIO_ANY,
        };
        // Refused on many NICs (i40e, ice want an EtherType or more); the default queue is
        // the best-effort queue anyway.
        let any = match validate(port, &any).and_then(|()| create(port, &any)) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!(
                    "rtchand: dpdk: the catch-all rule to the best-effort queue was refused, \
                     unmatched frames reach it as the device's default queue 0: {e}"
                );
                None
            }
        };
        Ok((
            Self {
                port,
                udp_port,
                cores,
                per_channel,
                channels: HashMap::new(),
                port_prio: port_rule.priority,
                port_rule: port_flow,
                _any: any,
                create_failures: 0,
            },
            mode,
        ))
    }

    /// Channel `id`'s receiver is on core `core` now (`None`: removed); `best_effort` says its
    /// class. Control thread only. A rule the device refuses leaves the channel to the
    /// software hand-off (counted in [`FlowSteering::create_failures`]).
    pub fn steer(&mut self, id: ChannelId, core: Option<u16>, best_effort: bool) {
        if let (Some(c), Some(&(old, be, ref flow))) = (core, self.channels.get(&id)) {
            if old == c && be == best_effort && (flow.is_some() || !self.per_channel) {
                return; // placed again where it is
            }
        }
        // The old rule goes first: two rules of one pattern conflict on most devices. Frames
        // in between match the port rule or none, and the software hand-off takes them on.
        self.channels.remove(&id);
        if let Some(core) = core.filter(|&c| c < self.cores) {
            let flow = if self.per_channel {
                let rule = Rule {
                    matches: Match::Channel {
                        udp_port: self.udp_port,
                        channel: id,
                    },
                    // A best-effort channel's frames wait in the best-effort queue, whose
                    // core hands them to the receiver's core.
                    queue: if best_effort {
                        BE_QUEUE
                    } else {
                        core_queue(core)
                    },
                    priority: PRIO_CHANNEL,
                };
                match create(self.port, &rule) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        if self.create_failures == 0 {
                            eprintln!(
                                "rtchand: dpdk: channel {id}'s rte_flow rule refused, it is \
                                 steered in software: {e}"
                            );
                        }
                        self.create_failures += 1;
                        None
                    }
                }
            } else {
                None
            };
            self.channels.insert(id, (core, best_effort, flow));
        }
        if !self.per_channel {
            self.retarget_port_rule();
        }
    }

    /// Port-rule mode: the rtchan port goes to the core holding most real-time receivers.
    fn retarget_port_rule(&mut self) {
        let want = core_queue(port_rule_core(
            self.cores,
            self.channels.values().map(|&(core, be, _)| (core, be)),
        ));
        if self.port_rule.as_ref().map(|f| f.rule().queue) == Some(want) {
            return;
        }
        self.port_rule = None;
        let rule = Rule {
            matches: Match::UdpPort(self.udp_port),
            queue: want,
            priority: self.port_prio,
        };
        match create(self.port, &rule) {
            Ok(f) => self.port_rule = Some(f),
            Err(e) => {
                self.create_failures += 1;
                eprintln!(
                    "rtchand: dpdk: the rtchan port rule to queue {want} was refused, frames \
                     go to the best-effort queue and are handed on in software: {e}"
                );
            }
        }
    }

    /// Rules the device refused after start (their channels are steered in software).
    pub fn create_failures(&self) -> u64 {
        self.create_failures
    }

    /// Per-channel rules installed now.
    pub fn channel_rules(&self) -> usize {
        self.channels.values().filter(|c| c.2.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane::spec::Endpoint;
    use dataplane::wire::{HeaderTemplate, RtHeader, ETH_LEN, RTCHAN_UDP_PORT, UDP_LEN};

    fn types(b: &Arrays<'_>) -> Vec<ffi::rte_flow_item_type> {
        b.items.iter().map(|i| i.type_).collect()
    }

    /// Reads a spec or mask a built item points to.
    fn read<T: Copy>(p: *const std::ffi::c_void) -> T {
        assert!(!p.is_null());
        // SAFETY: test only; p points into the borrowed Built's store, at a T (the builder set it
        // from a reference of that type).
        unsafe { *p.cast::<T>() }
    }

    #[test]
    fn udp_port_rule_is_eth_ipv4_udp_dst_to_the_queue() {
        let mut built = Rule {
            matches: Match::UdpPort(RTCHAN_UDP_PORT),
            queue: 3,
            priority: PRIO_PORT,
        }
        .build();
        let b = built.arrays();
        assert_eq!(
            types(&b),
            [
                ffi::RTE_FLOW_ITEM_TYPE_ETH,
                ffi::RTE_FLOW_ITEM_TYPE_IPV4,
                ffi::RTE_FLOW_ITEM_TYPE_UDP,
                ffi::RTE_FLOW_ITEM_TYPE_END
            ]
        );
        assert!(b.items[0].spec.is_null() && b.items[1].spec.is_null());
        let spec: ffi::rte_flow_item_udp = read(b.items[2].spec);
        let mask: ffi::rte_flow_item_udp = read(b.items[2].mask);
        assert_eq!(u16::from_be(spec.hdr.dst_port), RTCHAN_UDP_PORT);
        assert_eq!((mask.hdr.dst_port, mask.hdr.src_port), (0xffff, 0));
        assert_eq!(b.attr.ingress(), 1);
        assert_eq!((b.attr.egress(), b.attr.transfer()), (0, 0));
        assert_eq!((b.attr.group, b.attr.priority), (0, PRIO_PORT));
        assert_eq!(b.actions[0].type_, ffi::RTE_FLOW_ACTION_TYPE_QUEUE);
        let q: ffi::rte_flow_action_queue = read(b.actions[0].conf);
        assert_eq!(q.index, 3);
        assert_eq!(b.actions[1].type_, ffi::RTE_FLOW_ACTION_TYPE_END);
    }

    #[test]
    fn channel_rule_matches_the_channel_field_of_a_real_frame() {
        let channel = 0x0a0b_0c0d;
        let mut built = Rule {
            matches: Match::Channel {
                udp_port: RTCHAN_UDP_PORT,
                channel,
            },
            queue: 2,
            priority: PRIO_CHANNEL,
        }
        .build();
        let b = built.arrays();
        assert_eq!(
            types(&b)[2..],
            [
                ffi::RTE_FLOW_ITEM_TYPE_UDP,
                ffi::RTE_FLOW_ITEM_TYPE_RAW,
                ffi::RTE_FLOW_ITEM_TYPE_END
            ]
        );
        let raw: ffi::rte_flow_item_raw = read(b.items[3].spec);
        let mask: ffi::rte_flow_item_raw = read(b.items[3].mask);
        assert_eq!((raw.relative(), raw.search()), (1, 0));
        assert_eq!((raw.offset, raw.limit, raw.length), (CHANNEL_OFFSET, 0, 4));
        assert_eq!((mask.relative(), mask.search()), (1, 1));
        assert_eq!((mask.offset, mask.limit, mask.length), (-1, 0xffff, 0xffff));
        // SAFETY: test only; the pattern points at 4 bytes of the live store.
        let (pat, pmask) = unsafe {
            (
                std::slice::from_raw_parts(raw.pattern, 4).to_vec(),
                std::slice::from_raw_parts(mask.pattern, 4).to_vec(),
            )
        };
        assert_eq!(pmask, [0xff; 4]);
        // The bytes the rule looks for are where a real rtchan frame carries its channel:
        // CHANNEL_OFFSET after the end of the UDP header.
        let t = HeaderTemplate::new(&Endpoint::default());
        let rt = RtHeader {
            channel,
            frag_count: 1,
            frag_len: 3,
            msg_len: 3,
            ..RtHeader::default()
        };
        let mut f = vec![0u8; 128];
        let n = t.write_frame(&mut f, 1, &rt, b"abc");
        let ihl = usize::from(f[ETH_LEN] & 0x0f) * 4;
        let at = ETH_LEN + ihl + UDP_LEN + CHANNEL_OFFSET as usize;
        assert!(at + 4 <= n);
        assert_eq!(f[at..at + 4], pat[..]);
    }

    #[test]
    fn catch_all_is_eth_alone() {
        let mut built = Rule {
            matches: Match::Any,
            queue: BE_QUEUE,
            priority: PRIO_ANY,
        }
        .build();
        let b = built.arrays();
        assert_eq!(
            types(&b),
            [ffi::RTE_FLOW_ITEM_TYPE_ETH, ffi::RTE_FLOW_ITEM_TYPE_END]
        );
        assert!(b.items[0].spec.is_null() && b.items[0].mask.is_null());
        let q: ffi::rte_flow_action_queue = read(b.actions[0].conf);
        assert_eq!(q.index, BE_QUEUE);
    }

    #[test]
    fn port_rule_follows_the_core_with_most_real_time_receivers() {
        assert_eq!(port_rule_core(3, std::iter::empty()), 0);
        assert_eq!(port_rule_core(3, [(2, false)].into_iter()), 2);
        // Best-effort receivers do not count; a tie goes to the lower core.
        let placed = [(1, false), (2, false), (2, true), (2, true), (0, true)];
        assert_eq!(port_rule_core(3, placed.into_iter()), 1);
        assert_eq!(
            port_rule_core(3, [(1, false), (2, false), (2, false)].into_iter()),
            2
        );
        // A core beyond the port's is ignored, not a panic.
        assert_eq!(port_rule_core(2, [(5, false)].into_iter()), 0);
        assert_eq!(core_queue(0), 1);
        assert_ne!(core_queue(0), BE_QUEUE);
    }

    #[test]
    fn a_built_rule_can_move_until_its_arrays_are_made() {
        let built = Rule {
            matches: Match::Channel {
                udp_port: 1,
                channel: 7,
            },
            queue: 1,
            priority: 0,
        }
        .build();
        // Moved (to the heap and back): the arrays made afterwards point at where it is now.
        let mut moved = *Box::new(built);
        let b = moved.arrays();
        let raw: ffi::rte_flow_item_raw = read(b.items[3].spec);
        // SAFETY: test only; the pattern points at 4 bytes of the borrowed store.
        let pat = unsafe { std::slice::from_raw_parts(raw.pattern, 4) };
        assert_eq!(pat, 7u32.to_be_bytes());
        let q: ffi::rte_flow_action_queue = read(b.actions[0].conf);
        assert_eq!(q.index, 1);
    }
}
