//! The persisted channel table: what a restarted daemon re-establishes.
//!
//! After every open and close the control thread writes the table of channels this host sends
//! on (their `open` arguments and ids) to the configured state file, atomically: the JSON goes
//! to a temporary file in the same directory, is flushed to disk, and is renamed over the old
//! file, so a crash leaves either the old table or the new one, never a torn one. Incoming
//! channels are not persisted: their senders re-establish them.
//!
//! Reading is record by record ([`StateFile::read`]): a file that is not a state file of this
//! version at all (empty, truncated, not JSON, a duplicate key, another version) is
//! [`StateError::Unreadable`], and the daemon refuses to start on it unless told to discard
//! it, which keeps the file aside under a timestamped name ([`keep_aside`]) rather than
//! overwriting it. Inside a readable file each record is checked on its own; a bad one is a
//! [`RejectedRecord`] kept verbatim (the daemon writes it back with the table and reports it)
//! so one bad field never costs the other channels or itself.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::protocol::OpenArgs;

/// Version of the state file format.
pub const STATE_VERSION: u32 = 1;

/// One persisted channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelRecord {
    /// Channel id, kept across restarts.
    pub id: u32,
    /// How it was opened.
    pub open: OpenArgs,
}

/// The state file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Channels by ascending id.
    pub channels: Vec<ChannelRecord>,
}

/// A record of a readable state file that is not a valid channel record (or whose channel
/// could not be re-established): kept verbatim so it is written back, never dropped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedRecord {
    /// Its position in the file's `channels`, from 0.
    pub index: usize,
    /// Its id, when that much could be read.
    pub id: Option<u32>,
    /// What is wrong, naming the field.
    pub error: String,
    /// The record as it was in the file.
    pub record: serde_json::Value,
}

/// The daemon's last failed save of the state file, while no save has succeeded since: the
/// channel table in memory is intact, but a restart would restore the file's older one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaveFailure {
    /// The state file.
    pub path: String,
    /// Why the last attempt failed.
    pub error: String,
    /// When the first failed attempt of this run of failures was, UTC (`YYYYMMDDTHHMMSSZ`).
    pub since: String,
    /// When the last failed attempt was, UTC (`YYYYMMDDTHHMMSSZ`).
    pub last: String,
    /// What the first failed save was for (`open of channel 3`, `close of channel 3`, ...).
    pub after: String,
    /// Failed attempts since the last successful save (the daemon retries every second).
    pub attempts: u64,
}

/// A readable state file: the valid records and the rejected ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadedState {
    /// Valid records with their position in the file, in file order.
    pub records: Vec<(usize, ChannelRecord)>,
    /// Records that are not valid, in file order.
    pub rejected: Vec<RejectedRecord>,
}

/// A state file that could not be read or written.
#[derive(Debug, Error)]
pub enum StateError {
    /// I/O on the file or its temporary.
    #[error("state file {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not a state file of this version: nothing in it can be trusted record by record.
    #[error("state file {path}: {message}")]
    Unreadable {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl StateFile {
    /// Reads the table record by record; a missing file is an empty table.
    pub fn read(path: &Path) -> Result<LoadedState, StateError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LoadedState::default()),
            Err(source) => {
                return Err(StateError::Io {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        parse(&bytes).map_err(|message| StateError::Unreadable {
            path: path.to_owned(),
            message,
        })
    }

    /// Writes `channels` and the `kept` records verbatim, ordered by id, atomically
    /// (temporary file, fsync, rename, fsync of the directory).
    pub fn save_with(&self, kept: &[RejectedRecord], path: &Path) -> Result<(), StateError> {
        write_atomically(path, self.to_text(kept).as_bytes())
    }

    /// The file's text: `channels` and the `kept` records verbatim, ordered by id.
    pub fn to_text(&self, kept: &[RejectedRecord]) -> String {
        let mut all: Vec<(Option<u32>, serde_json::Value)> = self
            .channels
            .iter()
            .map(|c| {
                (
                    Some(c.id),
                    serde_json::to_value(c).expect("record serialises"),
                )
            })
            .collect();
        all.extend(kept.iter().map(|r| (r.id, r.record.clone())));
        all.sort_by_key(|(id, _)| id.unwrap_or(u32::MAX));
        let doc = serde_json::json!({
            "version": self.version,
            "channels": all.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        });
        serde_json::to_string_pretty(&doc).expect("state serialises")
    }

    /// Writes the table atomically.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        self.save_with(&[], path)
    }
}

/// Parses a state file's bytes: `Err` when the file as a whole is unreadable.
pub fn parse(bytes: &[u8]) -> Result<LoadedState, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))?;
    if text.trim().is_empty() {
        return Err("empty (a state file has at least a version and a channels list)".into());
    }
    let doc = crate::protocol::strict_value(text).map_err(|e| format!("not JSON: {e}"))?;
    let obj = doc
        .as_object()
        .ok_or_else(|| "not a JSON object".to_string())?;
    if let Some(k) = obj.keys().find(|k| *k != "version" && *k != "channels") {
        return Err(format!("unknown key '{k}' (expected version, channels)"));
    }
    match obj.get("version") {
        None => return Err("version: missing".into()),
        Some(v) if v.as_u64() == Some(u64::from(STATE_VERSION)) => {}
        Some(v) => {
            return Err(format!(
                "version: {v} (this build reads version {STATE_VERSION})"
            ))
        }
    }
    let channels = obj
        .get("channels")
        .ok_or_else(|| "channels: missing".to_string())?
        .as_array()
        .ok_or_else(|| "channels: not a list".to_string())?;
    let mut out = LoadedState::default();
    let mut seen = std::collections::BTreeSet::new();
    for (index, v) in channels.iter().enumerate() {
        let id = v
            .get("id")
            .and_then(|i| i.as_u64())
            .and_then(|i| u32::try_from(i).ok());
        let reject = |error: String| RejectedRecord {
            index,
            id,
            error,
            record: v.clone(),
        };
        match serde_path_to_error::deserialize::<_, ChannelRecord>(v) {
            Ok(r) if !seen.insert(r.id) => out
                .rejected
                .push(reject(format!("id: {} appears twice in the file", r.id))),
            Ok(r) => out.records.push((index, r)),
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                out.rejected.push(reject(if path == "." {
                    inner.to_string()
                } else {
                    format!("{path}: {inner}")
                }));
            }
        }
    }
    // An id shared by a valid and a rejected record: the valid one wins, the other is kept.
    for r in &mut out.rejected {
        if r.id.is_some_and(|id| seen.contains(&id)) && !r.error.starts_with("id:") {
            r.id = None;
        }
    }
    Ok(out)
}

fn write_atomically(path: &Path, text: &[u8]) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Checks at start-up that the table can be saved at `path`: its directory exists and a file
/// can be created there (created and removed at once), and `path` itself is not a directory.
pub fn check_writable(path: &Path) -> Result<(), String> {
    let dir = parent_dir(path);
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("{} is not a directory", dir.display())),
        Err(e) => return Err(format!("directory {}: {e}", dir.display())),
    }
    if path.is_dir() {
        return Err(format!("{} is a directory", path.display()));
    }
    let probe = dir.join(format!(".rtchan-probe.{}", std::process::id()));
    std::fs::File::create(&probe)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("cannot create a file in {}: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Renames an unreadable state file to `<path>.unreadable-<UTC timestamp>` (never over an
/// existing file); the new path.
pub fn keep_aside(path: &Path) -> Result<PathBuf, StateError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let stamp = utc_stamp(secs);
    let base = format!("{}.unreadable-{stamp}", path.display());
    let mut target = PathBuf::from(&base);
    let mut n = 1;
    while target.exists() {
        target = PathBuf::from(format!("{base}.{n}"));
        n += 1;
    }
    std::fs::rename(path, &target).map_err(|source| StateError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(target)
}

/// `YYYYMMDDTHHMMSSZ` for seconds since the epoch (civil-from-days, proleptic Gregorian).
pub fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::{Duration, Size};

    fn args() -> OpenArgs {
        OpenArgs {
            mmax: Size(1000),
            imin: Duration(1_000_000),
            bmax: 2,
            deadline: Duration(5_000_000),
            dst: "local".into(),
            core: None,
            txq: None,
            policy: Some("drop-oldest".into()),
            dry_run: false,
            source: Some("periodic".into()),
            message_size: None,
            best_effort: false,
            attach: false,
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rtchan-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn save_and_read_round_trip_and_leave_no_temporary() {
        let dir = temp("roundtrip");
        let path = dir.join("channels.json");
        assert_eq!(StateFile::read(&path).unwrap(), LoadedState::default());
        let s = StateFile {
            version: STATE_VERSION,
            channels: vec![ChannelRecord {
                id: 7,
                open: args(),
            }],
        };
        s.save(&path).unwrap();
        let l = StateFile::read(&path).unwrap();
        assert_eq!(
            (l.records, l.rejected),
            (vec![(0, s.channels[0].clone())], vec![])
        );
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1, "only the state file remains");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unreadable_files_say_why() {
        let good = serde_json::to_string(&StateFile {
            version: 1,
            channels: vec![ChannelRecord {
                id: 1,
                open: args(),
            }],
        })
        .unwrap();
        for (bytes, want) in [
            (b"".to_vec(), "empty"),
            (good.as_bytes()[..good.len() / 2].to_vec(), "not JSON"),
            (vec![0xff, 0x00, 0x13, 0x37], "not UTF-8"),
            (b"{\"version\":9,\"channels\":[]}".to_vec(), "version: 9"),
            (b"{\"version\":1}".to_vec(), "channels: missing"),
            (
                b"{\"version\":1,\"version\":1,\"channels\":[]}".to_vec(),
                "version",
            ),
            (b"[1,2]".to_vec(), "not a JSON object"),
        ] {
            let e = parse(&bytes).unwrap_err();
            assert!(e.contains(want), "{e} should say {want}");
        }
    }

    #[test]
    fn a_bad_record_is_kept_and_the_others_read() {
        let text = r#"{"version":1,"channels":[
            {"id":0,"open":{"mmax":"1000","imin":"1ms","bmax":2,"deadline":"5ms","dst":"local"}},
            {"id":1,"open":{"mmax":"1000","imin":"1ms","bmax":-3,"deadline":"5ms","dst":"local"}},
            {"id":2,"open":{"mmax":"1000","imin":"1ms","bmax":2,"deadline":"5ms","dst":"local","colour":1}},
            {"id":0,"open":{"mmax":"1000","imin":"1ms","bmax":2,"deadline":"5ms","dst":"local"}},
            "junk"
        ]}"#;
        let l = parse(text.as_bytes()).unwrap();
        assert_eq!(l.records.len(), 1);
        let errs: Vec<(Option<u32>, &str)> = l
            .rejected
            .iter()
            .map(|r| (r.id, r.error.as_str()))
            .collect();
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs[0].1.starts_with("open.bmax"), "{errs:?}");
        assert!(errs[1].1.contains("colour"), "{errs:?}");
        assert!(errs[2].1.contains("appears twice"), "{errs:?}");
        assert_eq!((errs[0].0, errs[1].0), (Some(1), Some(2)));

        // Written back verbatim beside the valid table.
        let dir = temp("kept");
        let path = dir.join("s.json");
        StateFile {
            version: 1,
            channels: l.records.iter().map(|r| r.1.clone()).collect(),
        }
        .save_with(&l.rejected, &path)
        .unwrap();
        let again = StateFile::read(&path).unwrap();
        assert_eq!(again.records, l.records);
        assert_eq!(again.rejected.len(), 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kept_aside_under_a_timestamp_and_writability_checked() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(1_796_212_800), "20261202T120000Z");
        let dir = temp("aside");
        let path = dir.join("s.json");
        std::fs::write(&path, "garbage").unwrap();
        let a = keep_aside(&path).unwrap();
        std::fs::write(&path, "more garbage").unwrap();
        let b = keep_aside(&path).unwrap();
        assert_ne!(a, b);
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "garbage");
        assert!(!path.exists());
        check_writable(&path).unwrap();
        let e = check_writable(&dir.join("missing/s.json")).unwrap_err();
        assert!(e.contains("missing"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
