//! Splitting an end-to-end bound D over the sending host, the network and the receiving host.
//!
//! `D = d_s + n + d_r`: `n` is the configured network bound towards the destination; `d_s`
//! and `d_r` are the local bounds each host's admission test must accept. The sender first
//! finds its least admissible `d_s` now ([`least_deadline`]), and offers the receiver the
//! budget `D − n − least(d_s)`. The receiver finds its own least `d_r`; if that exceeds the
//! budget it refuses, else it takes its least plus half of the slack ([`receiver_share`]) and
//! the sender takes the rest, `d_s = D − n − d_r ≥ least(d_s)`. Both admission tests are
//! monotone in the deadline, so each side's decision at its share is the decision at its
//! least bound plus slack. Either side's refusal refuses the whole channel.

use crate::admission::{Admission, AdmitError, ChannelRequest, Nanos, RequestError};

/// Largest deadline the search tries, ns (about 18 minutes): beyond it nothing is admitted.
const SEARCH_LIMIT: Nanos = 1 << 40;

/// The least host deadline `adm` would admit `req` with now (everything else in `req` as
/// given). `Err` when no deadline would do, or the request is invalid for another reason.
pub fn least_deadline(adm: &Admission, req: &ChannelRequest) -> Result<Nanos, AdmitError> {
    let fits = |d: Nanos| {
        adm.check(&ChannelRequest {
            deadline: d,
            ..*req
        })
    };
    let start = match fits(1) {
        Ok(_) => return Ok(1),
        Err(AdmitError::Invalid(RequestError::DeadlineTooShort { minimum, .. })) => minimum,
        Err(AdmitError::Rejected(rej)) => match rej.tightest_deadline {
            Some(d) => d,
            None => return Err(AdmitError::Rejected(rej)),
        },
        Err(e) => return Err(e),
    };
    let hint = match fits(start) {
        Ok(_) => return Ok(start),
        Err(AdmitError::Rejected(rej)) => match rej.tightest_deadline {
            Some(d) if d > start => d,
            Some(_) => start + 1,
            None => return Err(AdmitError::Rejected(rej)),
        },
        Err(e) => return Err(e),
    };
    if fits(hint).is_ok() {
        return Ok(hint);
    }
    // The hint was not enough: search. Exponential steps up, then bisect.
    let (mut lo, mut hi) = (hint, hint.saturating_mul(2));
    loop {
        match fits(hi) {
            Ok(_) => break,
            Err(e) if hi >= SEARCH_LIMIT => return Err(e),
            Err(_) => {
                lo = hi;
                hi = hi.saturating_mul(2);
            }
        }
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid).is_ok() {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(hi)
}

/// The receiving host's share of `budget` when its least bound is `least` (≤ `budget`):
/// its least plus half the slack, leaving the other half to the sender.
pub fn receiver_share(least: Nanos, budget: Nanos) -> Nanos {
    least + (budget.saturating_sub(least)) / 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::ResourceModel;

    fn req(deadline: Nanos) -> ChannelRequest {
        ChannelRequest {
            mmax: 8000,
            imin: 1_000_000,
            bmax: 2,
            deadline,
            core: None,
            txq: None,
        }
    }

    #[test]
    fn least_deadline_is_exact() {
        let mut adm = Admission::new(ResourceModel::default()).unwrap();
        for _ in 0..5 {
            let least = least_deadline(&adm, &req(1)).unwrap();
            assert!(adm.check(&req(least)).is_ok());
            assert!(adm.check(&req(least - 1)).is_err(), "least {least}");
            adm.admit(&req(least * 3)).unwrap();
        }
    }

    #[test]
    fn an_impossible_request_has_no_least() {
        let adm = Admission::new(ResourceModel::default()).unwrap();
        let r = ChannelRequest {
            mmax: 65_000,
            imin: 10_000,
            ..req(1)
        };
        assert!(least_deadline(&adm, &r).is_err());
    }

    #[test]
    fn the_receiver_takes_half_the_slack() {
        assert_eq!(receiver_share(100, 300), 200);
        assert_eq!(receiver_share(300, 300), 300);
    }
}
