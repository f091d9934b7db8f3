//! The root crate's operating-system edge: the few system calls the daemon and its clients
//! make that `std` does not wrap. `unsafe` in the root crate lives here and in the port
//! backends (`crate::ports`); everything above calls these safe functions.

pub mod unix;
