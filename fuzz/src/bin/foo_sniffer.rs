//! Fuzz target `foo_sniffer` (see src/lib.rs).
fn main() {
    switchyard_fuzz::run(switchyard_fuzz::foo_sniffer);
}
