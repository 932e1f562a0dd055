//! The I/O resources a worker owns, independent of the engine that drives them: the buffer
//! pool ([`buffer`]), kernel pipes for splicing ([`splice`]), the timer wheel ([`timer`]) and
//! the small result type every transfer reports ([`transfer`]).

pub mod buffer;
pub mod splice;
pub mod timer;
pub mod transfer;

pub use buffer::{Buf, BufferPool};
pub use splice::{Pipe, PipePool};
pub use transfer::Xfer;
