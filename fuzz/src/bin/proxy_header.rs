//! Fuzz target `proxy_header` (see src/lib.rs).
fn main() {
    switchyard_fuzz::run(switchyard_fuzz::proxy_header);
}
