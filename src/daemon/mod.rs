//! The rtchand daemon: configuration, the control thread, the Unix-socket server, peers.
