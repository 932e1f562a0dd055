//! The network edge of the process: binding listening sockets (one `SO_REUSEPORT` socket per
//! worker) and announcing them. Start-up ([`crate::server`]) and the control plane
//! ([`crate::control`]) both bind through here, so neither depends on the other for it.

pub mod listen;
