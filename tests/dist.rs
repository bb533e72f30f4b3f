//! The systemd units under `dist/`: each passes `systemd-analyze verify` with no
//! warning (pointed at the binary just built), and its command line is one the
//! binary accepts.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_loopcast");
const DIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dist");

/// Every `.service` file under `dist/`: (file name, text).
fn units() -> Vec<(String, String)> {
    let mut units: Vec<(String, String)> = std::fs::read_dir(DIST)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "service"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    units.sort();
    units
}

/// The unit's `ExecStart=` line, split into words.
fn exec_start(text: &str) -> Vec<String> {
    let line = (text.lines())
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart= line");
    line.split_whitespace().map(str::to_owned).collect()
}

fn systemd_analyze_available() -> bool {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    assert!(
        std::env::var_os("LOOPCAST_LAB_REQUIRED").is_none(),
        "systemd-analyze is required (.ci/run installs systemd)"
    );
    eprintln!("skipping: systemd-analyze is missing");
    false
}

#[test]
fn every_unit_verifies_without_a_warning() {
    if !systemd_analyze_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let units = units();
    assert!(units.len() >= 3, "{units:?}");
    for (name, text) in units {
        let unit = dir.path().join(&name);
        std::fs::write(&unit, text.replace("/usr/bin/loopcast", BIN)).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {said}");
        // Unknown keys are only warned about: a warning fails the test too.
        assert!(said.trim().is_empty(), "{name}: {said}");
    }
}

#[test]
fn every_units_command_line_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in units() {
        let words = exec_start(&text);
        assert_eq!(words[0], "/usr/bin/loopcast", "{name}");
        // Specifiers and the environment file's variable are systemd's to fill:
        // here a credentials, cache and state directory of our own, and no options.
        let args: Vec<String> = (words[1..].iter())
            .filter(|w| !w.starts_with('$'))
            .map(|w| {
                w.replace("%d", &dir.path().to_string_lossy())
                    .replace("%C", &dir.path().to_string_lossy())
                    .replace("%S", &dir.path().to_string_lossy())
            })
            .collect();
        let out = Command::new(BIN)
            .args(&args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
