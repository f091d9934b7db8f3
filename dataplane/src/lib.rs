//! rtchan's dataplane core (work in progress; see module docs).
pub mod port;
