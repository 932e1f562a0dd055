//! Fuzz target `framing_diff` (see src/lib.rs).
fn main() {
    switchyard_fuzz::run(switchyard_fuzz::framing::differential);
}
