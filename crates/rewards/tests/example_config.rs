//! The documented example configuration stays loadable.

use std::process::Command;

#[test]
fn the_example_config_file_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/rewards.example.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_rewards"))
        .args(["--config", example, "migrate"])
        .env("REWARDS_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}
