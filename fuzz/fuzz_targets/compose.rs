//! Any bytes as a compose file: the loader returns a project or an error, never panics or hangs
//! (aliases are expanded under a node budget).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = std::path::Path::new("/nonexistent-rbuild-fuzz");
    let opts = rbuild_compose::Options {
        project_name: Some("fuzz".into()),
        cwd: dir.to_path_buf(),
        ..Default::default()
    };
    let texts = [(
        dir.join("compose.yaml"),
        "compose.yaml".to_string(),
        text.to_string(),
    )];
    if let Ok(p) = rbuild_compose::load_texts(&opts, dir, &texts) {
        let _ = p.to_yaml();
        let _ = p.start_order(&[]);
        for s in p.services.values() {
            let _ = p.config_hash(s);
        }
    }
});
