//! Fuzz target `admin_api` (see src/lib.rs).
fn main() {
    switchyard_fuzz::run(switchyard_fuzz::admin_api);
}
