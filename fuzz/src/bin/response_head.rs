//! Fuzz target `response_head` (see src/lib.rs).
fn main() {
    switchyard_fuzz::run(switchyard_fuzz::response_head);
}
