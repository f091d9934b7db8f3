//! The persisted channel table: what a restarted daemon re-establishes.
//!
//! After every open and close the control thread writes the table of channels this host sends
//! on (their `open` arguments and ids) to the configured state file, atomically: the JSON goes
//! to a temporary file in the same directory, is flushed to disk, and is renamed over the old
//! file, so a crash leaves either the old table or the new one, never a torn one. Incoming
//! channels are not persisted: their senders re-establish them.

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
    /// Not a state file of this version.
    #[error("state file {path}: {message}")]
    Format {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl StateFile {
    /// Reads the table; a missing file is an empty table.
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self {
                    version: STATE_VERSION,
                    channels: Vec::new(),
                })
            }
            Err(source) => {
                return Err(StateError::Io {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let s: Self = serde_json::from_str(&text).map_err(|e| StateError::Format {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if s.version != STATE_VERSION {
            return Err(StateError::Format {
                path: path.to_owned(),
                message: format!("version {} (this build reads {STATE_VERSION})", s.version),
            });
        }
        Ok(s)
    }

    /// Writes the table atomically (temporary file, fsync, rename, fsync of the directory).
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "state".into());
        let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
        let text = serde_json::to_string_pretty(self).expect("state serialises");
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::{Duration, Size};

    #[test]
    fn save_and_load_round_trip_and_leave_no_temporary() {
        let dir = std::env::temp_dir().join(format!("rtchan-state-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("channels.json");
        assert_eq!(StateFile::load(&path).unwrap().channels, vec![]);
        let s = StateFile {
            version: STATE_VERSION,
            channels: vec![ChannelRecord {
                id: 7,
                open: OpenArgs {
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
                },
            }],
        };
        s.save(&path).unwrap();
        assert_eq!(StateFile::load(&path).unwrap(), s);
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1, "only the state file remains");
        std::fs::write(&path, "{\"version\":9,\"channels\":[]}").unwrap();
        assert!(StateFile::load(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
