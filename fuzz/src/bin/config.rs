//! Fuzz target `config` (see src/lib.rs).
fn main() {
    switchyard_fuzz::run(switchyard_fuzz::config);
}
