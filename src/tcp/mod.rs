//! L4 (TCP) proxying.

pub mod pipe;
pub mod splice;
