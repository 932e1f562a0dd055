//! Wire formats read below or beside the sessions, sans I/O (bytes in, results out): the Foo
//! line sniffer (reads bytes in passing, without changing them) and the PROXY protocol header.

pub mod foo;
pub mod proxy_protocol;
