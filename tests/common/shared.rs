//! Locating the shared material (real data, weights, fixtures), for the tests of every crate.

use std::path::{Path, PathBuf};

/// The shared folder: `$PNEUMOSCOPE_SHARED` (set by `cargo xtask test`, which fails when it is
/// missing), else a `shared/` beside the workspace; `None`, with a message, when there is none.
pub fn shared() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PNEUMOSCOPE_SHARED") {
        let p = PathBuf::from(p);
        assert!(
            p.join("data").is_dir(),
            "PNEUMOSCOPE_SHARED={} has no data/",
            p.display()
        );
        return Some(p);
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    match here
        .ancestors()
        .map(|a| a.join("shared"))
        .find(|s| s.join("data").is_dir())
    {
        Some(p) => Some(p.canonicalize().unwrap()),
        None => {
            eprintln!("SKIPPED: no shared/ folder beside the workspace (run `cargo xtask test`)");
            None
        }
    }
}
