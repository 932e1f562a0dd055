//! Fuzz target `chunked` (see src/lib.rs).
fn main() {
    switchyard_fuzz::run(switchyard_fuzz::chunked);
}
