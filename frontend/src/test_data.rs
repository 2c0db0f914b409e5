//! Where the tests find BuildKit's conformance data (test builds only).
//!
//! The data lives outside the repository, in `shared/conformance` next to it (see HELPERS.md).
//! It is looked for in `$RBUILD_CONFORMANCE_DIR`, else in `shared/conformance` beside the
//! repository or beside any of its ancestors (a git worktree may sit deeper than the main
//! checkout). Missing data fails the test that needs it: a conformance test that passes without
//! its data would prove nothing.

use std::path::{Path, PathBuf};

/// The conformance data directory `sub` (e.g. `buildkit/parser`); panics with the fix when absent.
pub(crate) fn conformance(sub: &str) -> PathBuf {
    let root = std::env::var_os("RBUILD_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .ancestors()
                .skip(1)
                .map(|a| a.join("shared/conformance"))
                .find(|p| p.is_dir())
        });
    let dir = root.as_ref().map(|r| r.join(sub));
    match dir {
        Some(d) if d.is_dir() => d,
        _ => panic!(
            "conformance data {sub} not found: put BuildKit's conformance data in \
             shared/conformance beside the repository or set RBUILD_CONFORMANCE_DIR \
             (looked in {root:?})"
        ),
    }
}
