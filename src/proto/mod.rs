//! Protocol analyzers that read bytes in passing without changing them (the Foo line
//! sniffer; the PROXY protocol will live here too). Sans-IO: bytes in, counts or results out.

pub mod foo;
