//! What this binary is: version, git commit, compiler, target (set by `build.rs`). Shown by
//! `switchyard version`, the start line, and the `switchyard_build_info` metric.

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("SWITCHYARD_GIT_COMMIT");
pub const RUSTC: &str = env!("SWITCHYARD_RUSTC");
pub const TARGET: &str = env!("SWITCHYARD_TARGET");
pub const PROFILE: &str = env!("SWITCHYARD_PROFILE");

/// `switchyard version`'s text.
pub fn long() -> String {
    format!(
        "switchyard {VERSION}\ncommit: {COMMIT}\ncompiler: {RUSTC}\ntarget: {TARGET}\nprofile: {PROFILE}\n"
    )
}
