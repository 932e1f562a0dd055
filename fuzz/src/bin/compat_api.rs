//! Fuzz target `compat_api` (see src/lib.rs).
fn main() {
    switchyard_fuzz::run(switchyard_fuzz::compat_api);
}
