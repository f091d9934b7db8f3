//! The admission API: request errors, rejection explanations, the tightest deadline,
//! release, placement, dry runs and the cost model's arithmetic.

use control::admission::demand::SEARCH_LIMIT;
use control::admission::offline::{run, CheckInput, Decision};
use control::admission::{
    Admission, AdmitError, ChannelRequest, CostModel, FailedTest, ModelError, RequestError,
    Resource, ResourceModel, UnknownChannel, UnknownCore, RTCHAN_HEADER_LEN,
};
use proptest::prelude::*;

fn req(mmax: u32, imin: u64, deadline: u64) -> ChannelRequest {
    ChannelRequest {
        mmax,
        imin,
        bmax: 2,
        deadline,
        core: None,
        txq: None,
    }
}

fn invalid(adm: &Admission, r: &ChannelRequest) -> RequestError {
    match adm.check(r) {
        Err(AdmitError::Invalid(e)) => e,
        other => panic!("expected an invalid request, got {other:?}"),
    }
}

fn rejected(adm: &Admission, r: &ChannelRequest) -> control::admission::Rejection {
    match adm.check(r) {
        Err(AdmitError::Rejected(rej)) => *rej,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn cost_model_arithmetic() {
    let c = CostModel::worked_example();
    assert_eq!(RTCHAN_HEADER_LEN, 40);
    assert_eq!(c.payload_per_packet(), 1500 - 20 - 8 - 40);
    assert_eq!(c.max_packet_wire_bytes(), 1500 + 14 + 4 + 8 + 12);
    assert_eq!(c.packets(1), 1);
    assert_eq!(c.packets(1432), 1);
    assert_eq!(c.packets(1433), 2);
    // A 1-byte message still pays every header and the minimum-frame padding rule.
    assert_eq!(c.wire_bytes(1), 1 + 40 + 8 + 20 + 14 + 4 + 8 + 12);
    assert_eq!(c.wire_bytes_of(1433, 0, 2), 1538 + c.wire_bytes(1));
    // 1538 bytes at 10 Gb/s is 1230.4 ns: rounded up.
    assert_eq!(c.link_ns(1538, 1_000_000), 1231);
    assert_eq!(c.link_ns(1538, 500_000), 2461);
    // Per packet: its handler work and a 32nd of a TX stage (500 / 32, rounded up).
    assert_eq!(c.cpu_cost(3), 400 + 3 * (150 + 16));
    // One RX burst, the client scan and one control command per service phase.
    assert_eq!(c.service_phase_ns(), 3_000 + 2_000 + 500);
    assert_eq!(c.handler_chunk(10, 4), 400 + 4 * 150);
    assert_eq!(c.handler_chunk(2, 4), 400 + 2 * 150);
}

#[test]
fn models_are_validated() {
    let bad = |f: fn(&mut ResourceModel)| {
        let mut m = ResourceModel::worked_example();
        f(&mut m);
        Admission::new(m).unwrap_err()
    };
    assert_eq!(bad(|m| m.cores = 0), ModelError::NoCores);
    assert_eq!(
        bad(|m| m.tx_queue_share_ppm.clear()),
        ModelError::TxQueueCount(0)
    );
    assert_eq!(
        bad(|m| m.tx_queue_share_ppm = vec![0]),
        ModelError::ZeroShare(0)
    );
    assert_eq!(
        bad(|m| m.tx_queue_share_ppm = vec![600_000, 500_000]),
        ModelError::SharesExceedLink(1_100_000)
    );
    assert_eq!(
        bad(|m| m.best_effort_reserve_ppm = 1_000_000),
        ModelError::ReserveTooLarge(1_000_000)
    );
    assert_eq!(bad(|m| m.granularity = 0), ModelError::ZeroGranularity);
    assert_eq!(bad(|m| m.cost.link_rate_bps = 0), ModelError::ZeroLinkRate);
    assert!(matches!(
        bad(|m| m.cost.mtu = 68),
        ModelError::MtuTooSmall { mtu: 68, .. }
    ));
    assert_eq!(bad(|m| m.max_message = 0), ModelError::MaxMessage(0));
    // Costs that contradict the loop they describe are refused, naming the keys.
    let e = bad(|m| m.cost.rx_burst_ns = 19_600);
    assert_eq!(
        e,
        ModelError::ServicePhaseTooLong {
            phase: 22_100,
            interval: 20_000
        }
    );
    let text = e.to_string();
    assert!(
        text.contains("cost.rx_burst_ns") && text.contains("cost.control_poll_ns"),
        "{text}"
    );
    let e = bad(|m| m.cost.tx_stage_ns = 4_000);
    assert_eq!(
        e,
        ModelError::TxStageTooLong {
            stage: 4_000,
            window: 4_000
        }
    );
    assert!(e.to_string().contains("cost.tx_stage_ns"), "{e}");
    assert!(e.to_string().contains("policy.tx_window"), "{e}");
    // The same costs fit a loop whose intervals are set longer, and the longer intervals are
    // what admission charges: the service phase every interval, a stage every window.
    let slow = ResourceModel {
        service_interval_ns: 200_000,
        tx_window_ns: 40_000,
        ..ResourceModel::worked_example()
    };
    let mut m = slow.clone();
    m.cost.rx_burst_ns = 19_600;
    m.cost.tx_stage_ns = 4_000;
    m.validate().unwrap();
    let [svc, stage] = m.cpu_overheads();
    assert_eq!((svc.cost, svc.period), (22_100, 200_000));
    assert_eq!((stage.cost, stage.period), (4_000, 40_000));
    assert_eq!(m.batch_window_ns(), 40_000 + m.longest_stretch());
    assert!(m.client_release_jitter() >= 200_000 + 22_100);
}

#[test]
fn each_bad_field_is_named() {
    let m = ResourceModel {
        cores: 2,
        tx_queue_share_ppm: vec![500_000, 500_000],
        ..ResourceModel::worked_example()
    };
    let adm = Admission::new(m).unwrap();
    let good = req(1000, 1_000_000, 100_000);
    assert!(adm.check(&good).is_ok());
    let cases: Vec<(ChannelRequest, RequestError, &str)> = vec![
        (
            ChannelRequest { imin: 0, ..good },
            RequestError::ZeroImin,
            "imin",
        ),
        (
            ChannelRequest { mmax: 0, ..good },
            RequestError::ZeroMmax,
            "mmax",
        ),
        (
            ChannelRequest { bmax: 0, ..good },
            RequestError::ZeroBmax,
            "bmax",
        ),
        (
            ChannelRequest {
                deadline: 0,
                ..good
            },
            RequestError::ZeroDeadline,
            "deadline",
        ),
        (
            ChannelRequest {
                mmax: 65_537,
                ..good
            },
            RequestError::MessageTooLarge {
                mmax: 65_537,
                max: 65_536,
            },
            "mmax",
        ),
        (
            ChannelRequest {
                core: Some(2),
                ..good
            },
            RequestError::UnknownCore { core: 2, cores: 2 },
            "core",
        ),
        (
            ChannelRequest {
                txq: Some(5),
                ..good
            },
            RequestError::UnknownTxq {
                txq: 5,
                tx_queues: 2,
            },
            "txq",
        ),
    ];
    for (r, want, field) in cases {
        let got = invalid(&adm, &r);
        assert_eq!(got, want);
        assert_eq!(got.field(), field);
        assert!(got.to_string().starts_with(field), "{got}");
    }
}

#[test]
fn deadline_below_the_idle_minimum_reports_the_minimum() {
    let adm = Admission::new(ResourceModel::worked_example()).unwrap();
    let r = req(5000, 1_000_000, 1_000);
    let RequestError::DeadlineTooShort { deadline, minimum } = invalid(&adm, &r) else {
        panic!("expected DeadlineTooShort");
    };
    assert_eq!(deadline, 1_000);
    // The minimum is exactly what an idle host admits.
    assert!(adm
        .check(&ChannelRequest {
            deadline: minimum,
            ..r
        })
        .is_ok());
    assert!(matches!(
        invalid(&adm, &ChannelRequest { deadline: minimum - 1, ..r }),
        RequestError::DeadlineTooShort { minimum: m, .. } if m == minimum
    ));
}

#[test]
fn overlap_makes_the_host_bound_tighter_than_the_sum() {
    // A CPU-bound multi-packet message: slow per-packet processing, full link rate.
    let m = ResourceModel {
        cost: CostModel {
            per_packet_ns: 2_000,
            best_effort_run_ns: 2_400, // one handler run of k = 1 packet
            ..CostModel::worked_example()
        },
        granularity: 1,
        ..ResourceModel::worked_example()
    };
    let adm = Admission::new(m.clone()).unwrap();
    let r = req(10 * 1432, 10_000_000, 1_000);
    let RequestError::DeadlineTooShort { minimum, .. } = invalid(&adm, &r) else {
        panic!("expected DeadlineTooShort");
    };
    let ok = adm
        .check(&ChannelRequest {
            deadline: minimum,
            ..r
        })
        .unwrap();
    // The CPU alone: the least t with cost + blocking + the loop's overheads due by t <= t.
    let blocking = m.cost.background_chunk() + m.cpu_blocking_extra();
    let overheads = m.cpu_overheads();
    let mut cpu_whole = ok.cpu_cost + blocking;
    loop {
        let h = ok.cpu_cost
            + blocking
            + overheads
                .iter()
                .map(|k| k.dbf(cpu_whole) as u64)
                .sum::<u64>();
        if h <= cpu_whole {
            break;
        }
        cpu_whole = h;
    }
    let link_whole = ok.link_cost + m.link_blocking(0);
    assert!(
        minimum < cpu_whole + link_whole,
        "{minimum} vs {cpu_whole} + {link_whole}"
    );
    // With the CPU the bottleneck, the link needs one packet (plus blocking) after it.
    let one_packet = m.cost.link_ns(m.cost.max_packet_wire_bytes(), 1_000_000);
    assert_eq!(minimum, cpu_whole + one_packet + m.link_blocking(0));
    assert_eq!(ok.link_deadline, minimum);
    assert!(ok.cpu_deadline < ok.link_deadline);
}

#[test]
fn admitted_channel_reports_reservation_and_costs() {
    let mut adm = Admission::new(ResourceModel::worked_example()).unwrap();
    let r = ChannelRequest {
        bmax: 3,
        ..req(3000, 1_000_000, 200_000)
    };
    let a = adm.admit(&r).unwrap();
    assert_eq!((a.id, a.core, a.txq), (0, 0, 0));
    assert_eq!(a.packets, 3);
    assert_eq!(a.buffer_messages, 3);
    assert_eq!(a.buffer_bytes, 9000);
    assert_eq!(a.cpu_cost, 400 + 3 * (150 + 16));
    assert_eq!(a.link_deadline, 200_000);
    assert!(a.cpu_deadline > 0 && a.cpu_deadline < a.link_deadline);
    // The channel's own share (the loop's overheads are the core's, not the channel's).
    assert_eq!(a.cpu_utilisation_ppm, 898);
    assert_eq!(a.core_utilisation_ppm, 898);
    assert_eq!(adm.utilisation().cores, vec![898]);
    assert_eq!(adm.channel(0), Some(&a));
}

#[test]
fn utilisation_rejection_has_the_numbers_and_no_deadline() {
    let mut adm = Admission::new(ResourceModel::worked_example()).unwrap();
    // Each takes 0.4 of the link: the third would exceed 0.95.
    let r = req(40 * 1432 + 1000, 150_000, 2_000_000);
    adm.admit(&r).unwrap();
    adm.admit(&r).unwrap();
    let rej = rejected(&adm, &r);
    assert_eq!(rej.resource, Resource::Link(0));
    let FailedTest::Utilisation {
        utilisation_ppm,
        limit_ppm,
    } = rej.test
    else {
        panic!("expected a utilisation failure: {rej:?}");
    };
    assert_eq!(limit_ppm, 950_000);
    assert!(utilisation_ppm > limit_ppm);
    assert_eq!(rej.tightest_deadline, None);
    assert!(rej.to_string().contains("txq 0 link"), "{rej}");
}

#[test]
fn demand_rejection_names_the_check_point_and_a_deadline_that_works() {
    let mut adm = Admission::new(ResourceModel::worked_example()).unwrap();
    // Heavy CPU work with short deadlines on core 0.
    let heavy = ChannelRequest {
        core: Some(0),
        ..req(20 * 1432, 100_000, 80_000)
    };
    while adm.admit(&heavy).is_ok() {}
    let rej = rejected(&adm, &heavy);
    let FailedTest::Demand {
        t,
        demand,
        blocking,
        ..
    } = rej.test
    else {
        panic!("expected a demand failure: {rej:?}");
    };
    assert!(demand + blocking > t);
    let d = rej.tightest_deadline.expect("a longer deadline fits");
    assert!(d > heavy.deadline);
    assert!(adm
        .check(&ChannelRequest {
            deadline: d,
            ..heavy
        })
        .is_ok());
    assert!(adm
        .check(&ChannelRequest {
            deadline: d - 1,
            ..heavy
        })
        .is_err());
}

#[test]
fn release_restores_the_state_exactly() {
    let m = ResourceModel {
        cores: 2,
        tx_queue_share_ppm: vec![300_000, 300_000, 400_000],
        ..ResourceModel::worked_example()
    };
    let mut adm = Admission::new(m).unwrap();
    let ids: Vec<u32> = (0..6)
        .map(|i| {
            adm.admit(&req(
                1000 + 2000 * i,
                500_000,
                100_000 + 10_000 * u64::from(i),
            ))
            .unwrap()
            .id
        })
        .collect();
    let before = adm.clone();
    let a = adm.admit(&req(9000, 300_000, 80_000)).unwrap();
    assert_ne!(adm, before);
    let released = adm.release(a.id).unwrap();
    assert_eq!(released, a);
    assert_eq!(adm, before);
    assert_eq!(adm.utilisation(), before.utilisation());
    assert_eq!(adm.release(a.id), Err(UnknownChannel(a.id)));
    // Ids are not reused.
    assert!(adm.admit(&req(100, 1_000_000, 100_000)).unwrap().id > a.id);
    for id in ids {
        adm.release(id).unwrap();
    }
}

#[test]
fn dry_run_reserves_nothing() {
    let mut adm = Admission::new(ResourceModel::worked_example()).unwrap();
    let r = req(5000, 200_000, 100_000);
    let before = adm.clone();
    let dry = adm.check(&r).unwrap();
    assert_eq!(adm, before);
    assert_eq!(adm.admit(&r).unwrap(), dry);
}

#[test]
fn placement_is_worst_fit_and_falls_through_to_what_fits() {
    let m = ResourceModel {
        cores: 3,
        tx_queue_share_ppm: vec![300_000, 300_000, 300_000],
        ..ResourceModel::worked_example()
    };
    let mut adm = Admission::new(m).unwrap();
    let small = req(1000, 1_000_000, 200_000);
    let a = adm.admit(&small).unwrap();
    assert_eq!((a.core, a.txq), (0, 0));
    let b = adm.admit(&small).unwrap();
    assert_eq!((b.core, b.txq), (1, 1));
    let c = adm
        .admit(&ChannelRequest {
            mmax: 2000,
            ..small
        })
        .unwrap();
    assert_eq!((c.core, c.txq), (2, 2));
    // Core 0 and queue 0 are now the least loaded again.
    let d = adm.admit(&small).unwrap();
    assert_eq!((d.core, d.txq), (0, 0));
    // Fill core 1 and queue 1 when named; unnamed requests go elsewhere.
    let hog = ChannelRequest {
        core: Some(1),
        txq: Some(1),
        ..req(40 * 1432, 1_000_000, 5_000_000)
    };
    while adm.admit(&hog).is_ok() {}
    let u = adm.utilisation();
    assert!(u.cores[1] > u.cores[0] && u.tx_queues[1] > u.tx_queues[0]);
    let e = adm.admit(&req(40 * 1432, 1_000_000, 5_000_000)).unwrap();
    assert_ne!(e.txq, 1);
}

#[test]
fn offline_run_matches_interactive_decisions() {
    let input = CheckInput {
        model: ResourceModel::worked_example(),
        requests: vec![
            req(1000, 1_000_000, 50_000),
            req(0, 1, 1),
            req(64_000, 50_000, 10_000_000),
        ],
    };
    let out = run(&input).unwrap();
    assert!(matches!(out[0], Decision::Admitted(ref a) if a.id == 0));
    assert!(matches!(out[1], Decision::Invalid { ref field, .. } if field == "mmax"));
    assert!(matches!(out[2], Decision::Rejected(_)));
    let json = serde_json::to_value(&out).unwrap();
    assert_eq!(json[0]["outcome"], "admitted");
    assert_eq!(json[2]["outcome"], "rejected");
    // Missing model fields take defaults; unknown fields are refused.
    let parsed: CheckInput =
        serde_json::from_str(r#"{"model": {"cores": 4}, "requests": []}"#).unwrap();
    assert_eq!(parsed.model.cores, 4);
    assert_eq!(
        parsed.model.granularity,
        ResourceModel::worked_example().granularity
    );
    assert!(
        serde_json::from_str::<CheckInput>(r#"{"model": {"corez": 4}, "requests": []}"#).is_err()
    );
}

fn random_host() -> impl Strategy<Value = (ResourceModel, Vec<ChannelRequest>, ChannelRequest)> {
    let r = (
        1u32..=20_000,
        20_000u64..=2_000_000,
        2_000u64..=3_000_000,
        0u16..2,
        0u16..2,
        any::<bool>(),
    )
        .prop_map(|(mmax, imin, deadline, core, txq, pin)| ChannelRequest {
            mmax,
            imin,
            bmax: 1,
            deadline,
            core: pin.then_some(core),
            txq: pin.then_some(txq),
        });
    (
        1u32..=4,
        100u64..=3000,
        prop::collection::vec(r.clone(), 0..12),
        r,
    )
        .prop_map(|(k, pp, existing, probe)| {
            let model = ResourceModel {
                cost: CostModel {
                    per_packet_ns: pp,
                    // A best-effort run is a handler run of up to k packets.
                    best_effort_run_ns: 2_000.max(400 + u64::from(k) * pp),
                    ..CostModel::worked_example()
                },
                cores: 2,
                tx_queue_share_ppm: vec![400_000, 600_000],
                granularity: k,
                ..ResourceModel::worked_example()
            };
            (model, existing, probe)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The tightest deadline is exact: it is admitted and 1 ns less is not; `None` means
    /// not even the longest deadline fits.
    #[test]
    fn tightest_deadline_is_exact((model, existing, probe) in random_host()) {
        let mut adm = Admission::new(model).unwrap();
        for r in &existing {
            let _ = adm.admit(r);
        }
        match adm.check(&probe) {
            Err(AdmitError::Rejected(rej)) => match rej.tightest_deadline {
                Some(d) => {
                    prop_assert!(d > probe.deadline);
                    let at = ChannelRequest { deadline: d, ..probe };
                    let below = ChannelRequest { deadline: d - 1, ..probe };
                    prop_assert!(adm.check(&at).is_ok());
                    prop_assert!(adm.check(&below).is_err());
                }
                None => {
                    let longest = ChannelRequest { deadline: SEARCH_LIMIT, ..probe };
                    prop_assert!(adm.check(&longest).is_err());
                }
            },
            Ok(a) => {
                prop_assert_eq!(a.link_deadline, probe.deadline);
                prop_assert!(a.cpu_deadline < a.link_deadline);
                // Admit then release leaves no trace.
                let before = adm.clone();
                let id = adm.admit(&probe).unwrap().id;
                adm.release(id).unwrap();
                prop_assert_eq!(&adm, &before);
            }
            Err(AdmitError::Invalid(_)) => {}
        }
    }
}

/// The numbers of the worked example in docs/admission.md.
#[test]
fn worked_example_in_the_docs() {
    let minimum = |m: ResourceModel, r: ChannelRequest| match Admission::new(m).unwrap().check(&r) {
        Err(AdmitError::Invalid(RequestError::DeadlineTooShort { minimum, .. })) => minimum,
        other => panic!("expected DeadlineTooShort, got {other:?}"),
    };
    let r = req(8000, 10_000_000, 1_000);
    // CPU-bound: 1.5 us per packet, granularity 1.
    let cpu_bound = ResourceModel {
        cost: CostModel {
            per_packet_ns: 1_500,
            ..CostModel::worked_example()
        },
        granularity: 1,
        ..ResourceModel::worked_example()
    };
    assert_eq!(cpu_bound.batch_window_ns(), 4_000 + 5_500 + 500);
    assert_eq!(cpu_bound.link_in_flight_frames(), 10);
    assert_eq!(cpu_bound.link_blocking(0), 13_535 + 10_000);
    assert_eq!(minimum(cpu_bound.clone(), r), 28_496 + 24_292);
    let a = Admission::new(cpu_bound)
        .unwrap()
        .check(&ChannelRequest {
            deadline: 60_000,
            ..r
        })
        .unwrap();
    assert_eq!(
        (a.packets, a.cpu_cost, a.link_cost),
        (6, 9_496, 5 * 1_231 + 757)
    );
    assert_eq!((a.cpu_deadline, a.link_deadline), (32_389, 60_000));
    // Link-bound: the defaults (150 ns per packet, granularity 4).
    // The CPU share is the 12 896 a lone job needs, although d_c in 14 600..18 895 counts a
    // second service phase and fails: the search walks over that gap, it does not bisect
    // (docs/admission.md §3, "Split").
    assert_eq!(minimum(ResourceModel::worked_example(), r), 12_896 + 30_145);
}

/// One core that both sends and receives is one ledger: the sending controller's channels,
/// booked on the receiving controller with `add_shared`, leave the receive side only what is
/// left of the core, and taking them back gives it all again.
#[test]
fn a_shared_core_is_booked_once_for_both_controllers() {
    // CPU-bound channels (5 us a packet, one packet per 100 us), so the core decides.
    let model = ResourceModel {
        cost: CostModel {
            per_packet_ns: 5_000,
            best_effort_run_ns: 20_400,
            ..CostModel::worked_example()
        },
        ..ResourceModel::worked_example()
    };
    let heavy = ChannelRequest {
        bmax: 1,
        ..req(1_000, 100_000, 10_000_000)
    };
    let mut tx = Admission::new(model.clone()).unwrap();
    let mut rx = Admission::new(model.clone()).unwrap();
    let fill = |adm: &mut Admission| {
        let mut ids = Vec::new();
        while let Ok(a) = adm.admit(&heavy) {
            ids.push(a.id);
        }
        ids
    };
    // Alone, the receiving controller fits as many as the core holds.
    let alone = fill(&mut rx).len();
    assert!(alone >= 4, "{alone}");
    rx = Admission::new(model.clone()).unwrap();
    // The sending side takes all but two of them, and books them on the receiving side.
    let sent: Vec<u32> = (0..alone - 2)
        .map(|_| tx.admit(&heavy).unwrap().id)
        .collect();
    for &id in &sent {
        rx.add_shared(id, tx.cpu_reservation(id).unwrap()).unwrap();
    }
    let received = fill(&mut rx);
    assert_eq!(received.len(), 2, "the receive side gets only what is left");
    assert_eq!(rx.channels().count(), 2, "shared work is not a channel");
    // Mirrored the other way, the sending side is full too.
    for &id in &received {
        tx.add_shared(id, rx.cpu_reservation(id).unwrap()).unwrap();
    }
    assert!(tx.check(&heavy).is_err());
    // Taken back, the receiving side has the whole core again.
    for &id in &sent {
        rx.remove_shared(id);
    }
    assert_eq!(fill(&mut rx).len(), alone - 2);
    // A reservation names its core; one the model lacks is refused.
    let mut r = tx.cpu_reservation(sent[0]).unwrap();
    r.core = 7;
    assert_eq!(rx.add_shared(99, r), Err(UnknownCore(7)));
    assert!(tx.cpu_reservation(12_345).is_none());
}
