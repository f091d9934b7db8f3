//! Reading: the channel table as `list` and `show` print it, per-channel statistics, refusal
//! counters, and the metrics endpoint's text. Nothing here changes the table.

use std::collections::BTreeMap;

use control::protocol::{
    percentiles, ApiError, ChannelList, ChannelStatsInfo, RxCounters, TxCounters,
};
use control::reservation::not_found;
use dataplane::rx::Receiver;
use dataplane::wire::ParseError;

use super::{Control, Dst};

impl Control {
    /// Counts a refused `channel open` by side and reason (for the metrics).
    pub(super) fn count_refusal(&mut self, e: &ApiError) {
        let key = match &e.refusal {
            Some(r) => {
                let resource = match r.rejection.resource {
                    control::admission::Resource::Cpu(_) => "cpu",
                    control::admission::Resource::Link(_) => "link",
                };
                let test = match r.rejection.test {
                    control::admission::FailedTest::Utilisation { .. } => "utilisation",
                    control::admission::FailedTest::Demand { .. } => "demand",
                };
                (r.side.clone(), format!("{resource}_{test}"))
            }
            None => (
                "request".to_string(),
                serde_json::to_value(e.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| "other".into()),
            ),
        };
        *self.refusals.entry(key).or_default() += 1;
    }

    /// The metrics endpoint's text: what `stats` reads (the channels' shared counters and
    /// histograms), the admission controllers and this thread's own counters; nothing from a
    /// polling core (see [`crate::daemon::metrics`]).
    pub fn metrics(&self) -> String {
        use crate::daemon::metrics::{bound_buckets, Exposition};
        let mut e = Exposition::default();
        for (&id, o) in &self.out {
            let ch = id.to_string();
            let l = [("channel", ch.as_str()), ("dst", o.info.dst.as_str())];
            let st = o.shared.stats.snapshot();
            for (name, help, v) in [
                (
                    "rtchan_channel_submitted_messages_total",
                    "Messages accepted by submit on the sending host.",
                    st.submitted,
                ),
                (
                    "rtchan_channel_sent_messages_total",
                    "Messages whose last packet left the sending host.",
                    st.messages_sent,
                ),
                (
                    "rtchan_channel_sent_packets_total",
                    "Packets sent.",
                    st.packets,
                ),
                ("rtchan_channel_sent_bytes_total", "Bytes sent.", st.bytes),
            ] {
                e.counter(name, help, &l, v);
            }
            for (reason, v) in [
                ("would_block", st.would_block),
                ("drop_newest", st.dropped_newest),
                ("drop_oldest", st.dropped_oldest),
                ("on_close", st.dropped_on_close),
            ] {
                e.counter(
                    "rtchan_channel_drops_total",
                    "Messages not sent, by reason: refused with a full buffer (would_block), \
                     dropped by the overflow policy, or discarded at close.",
                    &[l[0], l[1], ("reason", reason)],
                    v,
                );
            }
            for (name, help, v) in [
                (
                    "rtchan_channel_late_packets_total",
                    "Packets released after their link deadline.",
                    st.late_packets,
                ),
                (
                    "rtchan_channel_budget_overruns_total",
                    "Handler runs over their cycle budget.",
                    st.budget_overruns,
                ),
            ] {
                e.counter(name, help, &l, v);
            }
            let bound = if o.info.best_effort {
                0
            } else {
                o.info.sender.link_deadline
            };
            e.gauge(
                "rtchan_channel_host_bound_seconds",
                "The sending host's admitted bound d_s (0: best-effort).",
                &l,
                bound as f64 / 1e9,
            );
            e.histogram_ns(
                "rtchan_channel_host_delay_seconds",
                "Submit to last packet released on the sending host; buckets around d_s.",
                &l,
                &o.shared.stats.delay_snapshot(),
                &bound_buckets(bound),
            );
        }
        for (&id, i) in &self.inc {
            let Some(r) = i.receiver.as_ref() else {
                continue;
            };
            let ch = id.to_string();
            let l = [("channel", ch.as_str()), ("src", i.info.from.as_str())];
            let st = r.stats();
            for (name, help, v) in [
                (
                    "rtchan_channel_delivered_messages_total",
                    "Messages delivered on the receiving host.",
                    st.delivered.get(),
                ),
                (
                    "rtchan_channel_delivered_bytes_total",
                    "Payload bytes delivered.",
                    st.bytes.get(),
                ),
                (
                    "rtchan_channel_deadline_misses_total",
                    "Messages delivered after their end-to-end deadline.",
                    st.deadline_misses.get(),
                ),
                (
                    "rtchan_channel_lost_messages_total",
                    "Messages never received (sequence gaps).",
                    st.lost.get(),
                ),
                (
                    "rtchan_channel_duplicate_messages_total",
                    "Messages or fragments received twice.",
                    st.duplicates.get(),
                ),
                (
                    "rtchan_channel_reordered_messages_total",
                    "Messages that arrived after a later one.",
                    st.reordered.get(),
                ),
            ] {
                e.counter(name, help, &l, v);
            }
            for (reason, v) in [
                ("ring_full", st.ring_full.get()),
                ("incomplete", st.incomplete.get()),
            ] {
                e.counter(
                    "rtchan_channel_receive_drops_total",
                    "Messages dropped on the receiving host, by reason.",
                    &[l[0], l[1], ("reason", reason)],
                    v,
                );
            }
            let bound = if i.info.best_effort {
                0
            } else {
                i.info.end_to_end
            };
            e.gauge(
                "rtchan_channel_bound_seconds",
                "The channel's end-to-end bound D (0: best-effort).",
                &l,
                bound as f64 / 1e9,
            );
            e.histogram_ns(
                "rtchan_channel_latency_seconds",
                "Submit to delivery (end to end); buckets around D.",
                &l,
                &st.latency_snapshot(),
                &bound_buckets(bound),
            );
        }
        // Per TX queue (admission's queue i is core i's port queue): what the sending
        // channels on it report, and what admission has granted of it.
        let rate = self.cfg.link_rate_bps();
        let util = self.tx_adm.utilisation();
        for (q, ppm) in util.tx_queues.iter().enumerate() {
            let qs = q.to_string();
            let l = [("txq", qs.as_str())];
            let on_q = self
                .out
                .values()
                .filter(|o| usize::from(o.info.sender.txq) == q);
            let (late, packets) = on_q.fold((0, 0), |(a, b), o| {
                let st = o.shared.stats.snapshot();
                (a + st.late_packets, b + st.packets)
            });
            e.gauge(
                "rtchan_txq_paced_rate_bytes_per_second",
                "The rate the link scheduler paces the queue at.",
                &l,
                rate as f64 / 8.0,
            );
            e.counter(
                "rtchan_txq_late_packets_total",
                "Packets of the queue's open channels released after their link deadline.",
                &l,
                late,
            );
            e.counter(
                "rtchan_txq_packets_total",
                "Packets of the queue's open channels sent.",
                &l,
                packets,
            );
            e.gauge(
                "rtchan_admission_utilisation_ratio",
                "Real-time utilisation admitted on a resource (of 1).",
                &[("side", "tx"), ("resource", "link"), ("index", qs.as_str())],
                f64::from(*ppm) / 1e6,
            );
        }
        for (side, u) in [("tx", &util), ("rx", &self.rx_adm.utilisation())] {
            for (c, ppm) in u.cores.iter().enumerate() {
                let cs = c.to_string();
                e.gauge(
                    "rtchan_admission_utilisation_ratio",
                    "Real-time utilisation admitted on a resource (of 1).",
                    &[("side", side), ("resource", "cpu"), ("index", cs.as_str())],
                    f64::from(*ppm) / 1e6,
                );
            }
        }
        e.gauge(
            "rtchan_admission_limit_ratio",
            "The utilisation admission allows a resource (1 - best-effort reserve).",
            &[],
            1.0 - f64::from(self.policy.best_effort_reserve_ppm) / 1e6,
        );
        for ((side, reason), n) in &self.refusals {
            e.counter(
                "rtchan_admission_refusals_total",
                "channel open requests refused, by side (sender, receiver, request) and reason.",
                &[("side", side.as_str()), ("reason", reason.as_str())],
                *n,
            );
        }
        e.counter(
            "rtchan_state_save_failures_total",
            "Failed saves of the state file, retries included.",
            &[],
            self.save_failures_total,
        );
        e.gauge(
            "rtchan_state_unsaved",
            "1 while the last save of the state file failed (the table in memory is not on disk).",
            &[],
            if self.save_failure.is_some() {
                1.0
            } else {
                0.0
            },
        );
        e.gauge(
            "rtchan_channels",
            "Channels open on this host, by direction.",
            &[("direction", "out")],
            self.out.len() as f64,
        );
        e.gauge(
            "rtchan_channels",
            "Channels open on this host, by direction.",
            &[("direction", "in")],
            self.inc.values().filter(|i| i.info.from != "local").count() as f64,
        );
        // Per polling core: what it publishes on its own padded line (no lock on the core).
        for c in self.dp.core_stats() {
            let l = [("core", c.core.as_str())];
            e.counter(
                "rtchan_core_iterations_total",
                "Polling loop iterations of the core.",
                &l,
                c.iterations,
            );
            e.counter_f64(
                "rtchan_core_busy_seconds_total",
                "Time the core spent in iterations that did work (rate() of it is the busy \
                 share).",
                &l,
                c.busy_ns as f64 / 1e9,
            );
            e.gauge(
                "rtchan_core_busy_ratio",
                "Share of the core's time busy since its first iteration.",
                &l,
                c.busy_share,
            );
            e.gauge(
                "rtchan_core_longest_stretch_seconds",
                "Longest stretch without a preemption point the core measured (OS \
                 preemption within it included).",
                &l,
                c.longest_stretch_ns as f64 / 1e9,
            );
        }
        e.finish()
    }

    pub(super) fn list(&self, only: Option<u32>) -> ChannelList {
        ChannelList {
            channels: self
                .out
                .iter()
                .filter(|(id, _)| only.is_none_or(|o| o == **id))
                .map(|(_, o)| o.info.clone())
                .collect(),
            incoming: self
                .inc
                .iter()
                .filter(|(id, i)| only.is_none_or(|o| o == **id) && i.info.from != "local")
                .map(|(_, i)| i.info.clone())
                .collect(),
            unrestored: self
                .unrestored
                .iter()
                .filter(|r| only.is_none() || r.id == only)
                .cloned()
                .collect(),
            receive_rejected: self.receive_rejected(),
        }
    }

    /// Frames every receive path of this host rejected, by reason (non-zero only).
    pub(super) fn receive_rejected(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for slot in self.dp.tx.iter().chain(self.dp.rx.iter()) {
            let r = slot.handle.rx_rejects();
            for e in ParseError::ALL {
                let n = r.rejected[e.index()].get();
                if n > 0 {
                    *m.entry(e.name().to_string()).or_insert(0) += n;
                }
            }
        }
        m
    }

    pub(super) fn rx_counters(&self, id: u32, r: &Receiver) -> RxCounters {
        let mut c = self.rx_side_counters(id, r);
        if let Some(p) = self.inc.get(&id).and_then(|i| i.carried.as_ref()) {
            c.delivered += p.delivered;
            c.bytes += p.bytes;
            c.deadline_misses += p.deadline_misses;
            c.lost += p.lost;
            c.duplicates += p.duplicates;
            c.reordered += p.reordered;
            c.implausible_timestamps += p.implausible_timestamps;
            c.resyncs += p.resyncs;
            for (why, n) in &p.rejected {
                *c.rejected.entry(why.clone()).or_default() += n;
            }
        }
        c
    }

    /// The counters of receive side `r` alone.
    fn rx_side_counters(&self, id: u32, r: &Receiver) -> RxCounters {
        let s = r.stats();
        let (recent_misses, older_misses) = self.sink.recent_misses(id);
        RxCounters {
            delivered: s.delivered.get(),
            bytes: s.bytes.get(),
            deadline_misses: s.deadline_misses.get(),
            lost: s.lost.get(),
            duplicates: s.duplicates.get(),
            reordered: s.reordered.get(),
            latency: percentiles(&s.latency_snapshot()),
            recent_misses,
            older_misses,
            rejected: ParseError::ALL
                .iter()
                .map(|e| (e.name().to_string(), s.rejected[e.index()].get()))
                .filter(|(_, n)| *n > 0)
                .collect(),
            implausible_timestamps: s.implausible_timestamps.get(),
            resyncs: s.resyncs.get(),
        }
    }

    pub(super) fn stats(&self, only: Option<u32>) -> Result<Vec<ChannelStatsInfo>, ApiError> {
        if let Some(id) = only {
            if !self.out.contains_key(&id) && !self.inc.contains_key(&id) {
                return Err(not_found(id));
            }
        }
        Ok(self.all_stats(only))
    }

    pub(super) fn all_stats(&self, only: Option<u32>) -> Vec<ChannelStatsInfo> {
        let mut v = Vec::new();
        for (&id, o) in &self.out {
            if only.is_some_and(|x| x != id) {
                continue;
            }
            let s = &o.shared.stats;
            let snap = s.snapshot();
            let rx = match o.dst {
                Dst::Local => self
                    .inc
                    .get(&id)
                    .and_then(|i| i.receiver.as_ref())
                    .map(|r| self.rx_counters(id, r)),
                Dst::Peer(_) => None,
            };
            v.push(ChannelStatsInfo {
                id,
                direction: "out".into(),
                peer: o.info.dst.clone(),
                uptime_s: o.opened.elapsed().as_secs_f64(),
                tx: Some(TxCounters {
                    submitted: snap.submitted,
                    sent: snap.messages_sent,
                    packets: snap.packets,
                    bytes: snap.bytes,
                    would_block: snap.would_block,
                    dropped: snap.dropped_newest + snap.dropped_oldest + snap.dropped_on_close,
                    late_packets: snap.late_packets,
                    budget_overruns: snap.budget_overruns,
                    invalid: snap.invalid_descriptors,
                    restamped: snap.restamped,
                    delay: percentiles(&s.delay_snapshot()),
                }),
                rx,
            });
        }
        for (&id, i) in &self.inc {
            if only.is_some_and(|x| x != id) || i.info.from == "local" {
                continue;
            }
            v.push(ChannelStatsInfo {
                id,
                direction: "in".into(),
                peer: i.info.from.clone(),
                uptime_s: i.opened.elapsed().as_secs_f64(),
                tx: None,
                rx: i.receiver.as_ref().map(|r| self.rx_counters(id, r)),
            });
        }
        v
    }
}
