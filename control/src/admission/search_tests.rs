//! The search for `d_c,min` against brute force: the CPU test is not monotone in `d_c`, so
//! the walk must find the least passing value, pockets below a gap included.

use proptest::prelude::*;

use super::*;

/// Every `d_c` below the walk's answer is tried; this keeps a case well under a second.
const SCAN_LIMIT: Nanos = 60_000;

fn request() -> impl Strategy<Value = ChannelRequest> {
    (1u32..=20_000, 20_000u64..=400_000, 20_000u64..=600_000).prop_map(|(mmax, imin, deadline)| {
        ChannelRequest {
            mmax,
            imin,
            bmax: 1,
            deadline,
            core: Some(0),
            txq: None,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// `least_cpu_deadline` equals the first passing value of a linear scan.
    #[test]
    fn walk_finds_the_least_passing_cpu_deadline(
        pp in 100u64..=3000,
        k in 1u32..=4,
        wc in any::<bool>(),
        existing in prop::collection::vec(request(), 0..6),
        probe in request(),
    ) {
        let model = ResourceModel {
            cost: CostModel {
                per_packet_ns: pp,
                // A best-effort run is a handler run of up to k packets.
                best_effort_run_ns: 2_000.max(400 + u64::from(k) * pp),
                ..CostModel::worked_example()
            },
            cores: 1,
            tx_queue_share_ppm: vec![1_000_000],
            granularity: k,
            work_conserving: wc,
            ..ResourceModel::worked_example()
        };
        let mut adm = Admission::new(model).unwrap();
        for r in &existing {
            let _ = adm.admit(r);
        }
        let mut cand = Candidates::new(&adm, &probe);
        let found = cand.least_cpu_deadline(Some(0), 1);
        let scan_to = found.unwrap_or(SCAN_LIMIT).min(SCAN_LIMIT);
        let first = (1..scan_to).find(|&dc| cand.cpu_test(Some(0), dc).is_ok());
        prop_assert_eq!(first, None, "walk answered {:?}", found);
        if let Some(dc) = found {
            prop_assert!(cand.cpu_test(Some(0), dc).is_ok());
        }
    }
}

/// A pocket: on an idle core with the defaults, a lone job passes from 12 896 ns, fails from
/// 14 600 to 18 895 (a second service phase is counted) and passes again from 18 896.
#[test]
fn walk_stops_in_the_pocket_below_a_gap() {
    let adm = Admission::new(ResourceModel::worked_example()).unwrap();
    let req = ChannelRequest {
        mmax: 8000,
        imin: 10_000_000,
        bmax: 1,
        deadline: 1_000_000,
        core: None,
        txq: None,
    };
    let mut cand = Candidates::new(&adm, &req);
    assert!(cand.cpu_test(None, 12_895).is_err());
    assert!(cand.cpu_test(None, 12_896).is_ok());
    assert!(cand.cpu_test(None, 16_000).is_err());
    assert!(cand.cpu_test(None, 18_896).is_ok());
    assert_eq!(cand.least_cpu_deadline(None, 1), Some(12_896));
    // Bisection over [12 895, 16 000] could have answered either side of the gap.
    assert_eq!(cand.least_cpu_deadline(None, 14_600), Some(18_896));
}
