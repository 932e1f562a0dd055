//! The Gatling-style Locust scenario (perf/locustfile.py) runs headless for a few seconds
//! through Switchyard at a small scale, with faults off: every request answered and checked,
//! no failure, CSV and HTML reports written.
mod util;

use util::{u64_at, BIN};

#[test]
fn locust_scenario_runs_clean_with_faults_off() {
    let out = tempfile::tempdir().expect("tempdir");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/perf/loadtest");
    let run = std::process::Command::new("python3")
        .args([
            script,
            "--bin",
            BIN,
            "--scale",
            "0.05",
            "--ramp",
            "2",
            "--hold",
            "2",
            "--no-broker",
            "--out",
        ])
        .arg(out.path())
        .output()
        .expect("python3 (tests/deps.sh installs locust)");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "perf/loadtest failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("loadtest off: "))
        .unwrap_or_else(|| panic!("no summary line:\n{stdout}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("summary JSON");
    assert!(u64_at(&v, "/requests") >= 10, "{line}");
    assert_eq!(v["failures"], 0, "{line}");
    for f in ["off_stats.csv", "off_failures.csv", "off.html"] {
        assert!(out.path().join(f).is_file(), "{f} written");
    }
}
