//! rtchan's control plane.
