//! The house's layout rules, read from the sources by `scripts/layout.py`: no import circle
//! between the files of a crate, no source file over 1,000 lines, every repository path the
//! README, `docs/` and `configs/` cite exists, and every module is named in
//! `docs/architecture.md` (the script's docstring has the exact rules).

use std::process::Command;

#[test]
fn layout_rules_hold() {
    let out = Command::new("python3")
        .arg("scripts/layout.py")
        // The checkout as cargo runs the test, not as a reused binary was built.
        .current_dir(
            std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
        )
        .output()
        .expect("running python3 scripts/layout.py");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
