//! Fuzz target `request_head` (see src/lib.rs).
fn main() {
    switchyard_fuzz::run(switchyard_fuzz::request_head);
}
