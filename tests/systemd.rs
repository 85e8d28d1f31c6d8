//! The systemd unit passes `systemd-analyze verify` (where systemd is installed), with the
//! binary path pointed at the one this build made.

mod common;

#[test]
fn unit_file_verifies() {
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("systemd-analyze not installed: skipped");
        return;
    };
    assert!(out.status.success());
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/llm-router.service"
    ))
    .unwrap();
    assert!(
        unit.contains("ExecReload=/usr/local/bin/llm-router -u -d"),
        "reload starts the new process first"
    );
    assert!(unit.contains("ExecReload=/bin/kill -QUIT $MAINPID"));
    assert!(unit.contains("KillMode=control-group"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llm-router.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/llm-router", common::bin()),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");

    // Hardened: a dedicated user, no privileges, read-only system; exposure at most 5.0.
    for key in [
        "User=llm-router",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "DeviceAllow=char-nvidia-frontend rw",
    ] {
        assert!(unit.contains(key), "{key} missing");
    }
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for llm-router.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    println!("systemd-analyze security: exposure {exposure}");
    assert!(exposure <= 5.0, "exposure {exposure}: {text}");
}
