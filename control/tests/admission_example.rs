//! The shipped example input parses and gives the decisions docs/admission.md describes.

use control::admission::offline::{run_json, Decision};
use control::admission::{FailedTest, Resource};

#[test]
fn example_file_decides_every_request() {
    let text = include_str!("../../docs/examples/admission-check.json");
    let d = run_json(text).expect("example is valid");
    assert_eq!(d.len(), 7);
    for (i, want_core) in [(0, 0), (1, 1), (2, 0)] {
        assert!(
            matches!(d[i], Decision::Admitted(ref a) if a.core == want_core),
            "{:?}",
            d[i]
        );
    }
    let Decision::Rejected(ref r) = d[3] else {
        panic!("{:?}", d[3]);
    };
    assert_eq!(r.resource, Resource::Link(2));
    assert!(matches!(r.test, FailedTest::Demand { .. }));
    assert!(r.tightest_deadline.is_some());
    let Decision::Rejected(ref r) = d[4] else {
        panic!("{:?}", d[4]);
    };
    assert!(matches!(r.test, FailedTest::Utilisation { .. }));
    assert_eq!(r.tightest_deadline, None);
    assert!(matches!(d[5], Decision::Invalid { ref field, .. } if field == "deadline"));
    assert!(matches!(d[6], Decision::Invalid { ref field, .. } if field == "mmax"));
}
