//! The whole frontend on arbitrary text: parse, type every instruction, convert to a build graph
//! (with a resolver that knows every image), and render any error with its source snippet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rbuild_frontend::{instructions, BuildOptions, ImageConfig, ImageResolver};
use rbuild_types::{ImageRef, Platform};

struct AnyImage;

impl ImageResolver for AnyImage {
    fn resolve_config(&self, image: &ImageRef, _: &Platform) -> Result<ImageConfig, String> {
        if image.to_string().contains("missing") {
            return Err(format!("image {image} not found"));
        }
        Ok(ImageConfig::default())
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match rbuild_frontend::parse(text) {
        Ok(df) => {
            let _ = df.dump();
            for node in &df.instructions {
                if let Err(e) = instructions::parse_instruction(node) {
                    let _ = e.with_source(text).to_string();
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let opts = BuildOptions {
        build_args: vec![("A".into(), "1".into()), ("NOPE".into(), "x".into())],
        target: None,
        platform: None,
        dockerfile_name: "Dockerfile".into(),
    };
    if let Err(e) = rbuild_frontend::convert(text, &opts, &AnyImage) {
        let _ = e.to_string();
    }
});
