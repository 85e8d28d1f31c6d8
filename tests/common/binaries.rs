//! Where the built example binaries are, for the tests and the soak benchmark alike.

use std::path::PathBuf;

/// `examples/fake_engine` of the same profile: from `target/<profile>/deps/<test>` to
/// `target/<profile>/examples/fake_engine`.
pub fn fake_engine() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/fake_engine");
    assert!(p.exists(), "build the example first: {}", p.display());
    p
}
