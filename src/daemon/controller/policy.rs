//! The run-time policy (`policy set`, SIGHUP): validated as a whole, refused while channels
//! are open when it would change what admission guaranteed them, then applied to the
//! admission models and every core.

use control::admission::{Admission, ResourceModel};
use control::protocol::{ApiError, ErrorKind, PolicyInfo, PolicyUpdate};
use dataplane::sched::SchedPolicy;
use dataplane::spec::OverflowPolicy;

use super::{internal, validate::model_error, Control};

impl Control {
    pub(super) fn policy_set(&mut self, u: &PolicyUpdate) -> Result<PolicyInfo, ApiError> {
        let mut next = self.policy.clone();
        if let Some(g) = u.granularity {
            next.granularity = g;
        }
        if let Some(w) = u.work_conserving {
            next.work_conserving = w;
        }
        if let Some(r) = u.best_effort_reserve_ppm {
            next.best_effort_reserve_ppm = r;
        }
        if let Some(b) = u.run_budget_cycles {
            next.run_budget_cycles = b;
        }
        if let Some(o) = &u.overflow {
            o.parse::<OverflowPolicy>()
                .map_err(|m| ApiError::invalid("overflow", format!("overflow: {m}")))?;
            next.overflow = o.clone();
        }
        if let Some(c) = &u.close {
            if c != "drain" && c != "discard" {
                return Err(ApiError::invalid(
                    "close",
                    format!("close: '{c}' is neither drain nor discard"),
                ));
            }
            next.close = c.clone();
        }
        let sched = SchedPolicy {
            granularity: next.granularity,
            work_conserving: next.work_conserving,
            best_effort_reserve_ppm: next.best_effort_reserve_ppm,
            run_budget_cycles: next.run_budget_cycles,
            fifo: false,
        };
        sched
            .validate()
            .map_err(|e| ApiError::invalid("policy", format!("policy: {e}")))?;
        let model_changes = next.granularity != self.policy.granularity
            || next.work_conserving != self.policy.work_conserving
            || next.best_effort_reserve_ppm != self.policy.best_effort_reserve_ppm;
        if model_changes {
            let open = self.out.len() + self.inc.len();
            if open > 0 {
                return Err(ApiError::new(
                    ErrorKind::Refused,
                    format!(
                        "granularity, work_conserving and best_effort_reserve_ppm change what \
                         admission guaranteed; close the {open} open channel(s) first"
                    ),
                ));
            }
            let tx = ResourceModel {
                granularity: next.granularity,
                work_conserving: next.work_conserving,
                best_effort_reserve_ppm: next.best_effort_reserve_ppm,
                ..self.tx_adm.model().clone()
            };
            let rx = ResourceModel {
                granularity: next.granularity,
                work_conserving: next.work_conserving,
                best_effort_reserve_ppm: next.best_effort_reserve_ppm,
                ..self.rx_adm.model().clone()
            };
            self.tx_adm = Admission::new(tx).map_err(model_error)?;
            self.rx_adm = Admission::new(rx).map_err(model_error)?;
        }
        for slot in self.dp.tx.iter_mut().chain(self.dp.rx.iter_mut()) {
            slot.handle
                .set_policy(sched)
                .map_err(|e| internal(format!("a core refused the policy: {e}")))?;
        }
        self.policy = next;
        Ok(self.policy.clone())
    }
}
