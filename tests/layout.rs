//! The house's layout rules, read from the sources by `scripts/layout.py`: no import circle
//! between the files of a crate, and no source file over 1,000 lines.

use std::process::Command;

#[test]
fn no_import_circle_and_no_file_over_a_thousand_lines() {
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
