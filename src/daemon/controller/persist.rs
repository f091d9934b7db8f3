//! Persistence: the state file written after every change (a failed save is reported and
//! retried, never loses the table in memory), and the channels re-established from it at
//! start, with the records that could not be kept and listed until discarded.

use std::time::Instant;

use control::protocol::{ApiError, ErrorKind};
use control::state::{
    utc_stamp, ChannelRecord, LoadedState, RejectedRecord, SaveFailure, StateError, StateFile,
    STATE_VERSION,
};

use super::{Control, SAVE_RETRY};

impl Control {
    /// Re-establishes the channels of a state file read record by record; returns how many
    /// came back and, for the log, why the others did not. Those stay in the table as
    /// `unrestored` (listed, written back to the file) until closed: none is dropped.
    pub fn restore(&mut self, state: LoadedState) -> (usize, Vec<String>) {
        let ids = state
            .records
            .iter()
            .map(|(_, c)| c.id)
            .chain(state.rejected.iter().filter_map(|r| r.id));
        self.next_id = ids.map(|id| id.wrapping_add(1)).max().unwrap_or(0);
        self.unrestored = state.rejected;
        let mut ok = 0;
        for (index, rec) in state.records {
            match self.open(&rec.open, Some(rec.id)) {
                Ok(_) => ok += 1,
                Err(e) => self.unrestored.push(RejectedRecord {
                    index,
                    id: Some(rec.id),
                    error: e.message,
                    record: serde_json::to_value(&rec).expect("a record serialises"),
                }),
            }
        }
        self.unrestored.sort_by_key(|r| r.index);
        self.persist("the restore at start-up");
        let errors = self
            .unrestored
            .iter()
            .map(|r| match r.id {
                Some(id) => format!("channel {id} (record {}): {}", r.index, r.error),
                None => format!("record {}: {}", r.index, r.error),
            })
            .collect();
        (ok, errors)
    }

    /// Writes the table to the state file. A failure changes nothing in memory: it is logged,
    /// counted, carried on every client reply (`state_save_failed`) and retried every
    /// [`SAVE_RETRY`] until a save succeeds, which clears it. `after` says what the save was for.
    pub(super) fn persist(&mut self, after: &str) {
        let Some(path) = self.state_path.clone() else {
            return;
        };
        let state = StateFile {
            version: STATE_VERSION,
            channels: self
                .out
                .iter()
                .map(|(&id, o)| ChannelRecord {
                    id,
                    open: o.args.clone(),
                })
                .collect(),
        };
        self.last_save_attempt = Instant::now();
        let e = match state.save_with(&self.unrestored, &path) {
            Ok(()) => {
                if let Some(f) = self.save_failure.take() {
                    tracing::warn!(
                        "rtchand: state file {} saved again after {} failed attempt(s) since {}",
                        f.path,
                        f.attempts,
                        f.since
                    );
                }
                return;
            }
            Err(e) => e,
        };
        self.save_failures_total += 1;
        let why = match &e {
            StateError::Io { source, .. } => source.to_string(),
            StateError::Unreadable { message, .. } => message.clone(),
        };
        let now = utc_stamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        );
        match &mut self.save_failure {
            Some(f) => {
                f.attempts += 1;
                f.last = now;
                if f.error != why {
                    tracing::error!("rtchand: {e} (still not saved since {})", f.since);
                    f.error = why;
                }
            }
            None => {
                tracing::error!(
                    "rtchand: {e} (saving after {after}); the channel table is kept in memory, \
                     the save retried every {}s, and `channel list`/`stats` show it",
                    SAVE_RETRY.as_secs()
                );
                self.save_failure = Some(SaveFailure {
                    path: path.display().to_string(),
                    error: why,
                    since: now.clone(),
                    last: now,
                    after: after.to_string(),
                    attempts: 1,
                });
            }
        }
    }

    /// Drops record `record` (its number as listed) of those not re-established from the
    /// state file, and saves the table without it; the reply carries the record verbatim.
    pub(super) fn discard_unrestored(
        &mut self,
        record: usize,
    ) -> Result<serde_json::Value, ApiError> {
        let Some(i) = self.unrestored.iter().position(|r| r.index == record) else {
            let listed: Vec<String> = self
                .unrestored
                .iter()
                .map(|r| r.index.to_string())
                .collect();
            return Err(ApiError {
                kind: ErrorKind::NotFound,
                field: Some("record".into()),
                message: if listed.is_empty() {
                    format!("record: no unrestored record {record}: every record of the state file was re-established")
                } else {
                    format!(
                        "record: no unrestored record {record} (unrestored records: {})",
                        listed.join(", ")
                    )
                },
                refusal: None,
            });
        };
        let r = self.unrestored.remove(i);
        self.persist(&format!("discarding unrestored record {record}"));
        Ok(serde_json::json!({
            "record": r.index,
            "id": r.id,
            "state": "discarded",
            "error": r.error,
            "content": r.record,
        }))
    }

    /// Where channel `id` is among the records not re-established.
    pub(super) fn unrestored_index(&self, id: u32) -> Option<usize> {
        self.unrestored.iter().position(|r| r.id == Some(id))
    }
}
