//! What the end-to-end harnesses share.

use std::path::PathBuf;
use std::process::Command;

/// Builds `bin` of `package` in release mode (as deployed) and returns its path.
pub fn built_release_binary(package: &str, bin: &str) -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .expect("workspace");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", package, "--bin", bin])
        .current_dir(&workspace)
        .status()
        .expect("cargo build");
    assert!(status.success(), "building {bin} failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    target.join("release").join(bin)
}
