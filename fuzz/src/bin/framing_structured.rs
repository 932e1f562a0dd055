//! Fuzz target `framing_structured` (see src/lib.rs).
fn main() {
    switchyard_fuzz::run(switchyard_fuzz::framing::structured);
}
