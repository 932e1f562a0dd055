//! Wire formats read or written below the sessions, sans I/O: the PROXY protocol header.

pub mod proxy_protocol;
