//! Which platform a stored image is for, and whether it serves a stage's platform.

use rbuild_types::{ImageRef, Platform};
use serde_json::Value;

use crate::Error;

/// The platform an image config document declares (`os`, `architecture`, `variant`), if any.
pub fn config_platform(doc: &Value) -> Option<Platform> {
    let os = doc["os"].as_str().filter(|s| !s.is_empty())?;
    let architecture = doc["architecture"].as_str().filter(|s| !s.is_empty())?;
    Some(Platform {
        os: os.to_string(),
        architecture: architecture.to_string(),
        variant: doc["variant"].as_str().map(str::to_string),
    })
}

/// Whether an image for `have` can serve a stage for `want`: same OS and architecture, and the
/// same variant when both name one (`linux/arm64` and `linux/arm64/v8` are the same).
pub fn platform_matches(have: &Platform, want: &Platform) -> bool {
    have.os == want.os
        && have.architecture == want.architecture
        && match (&have.variant, &want.variant) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
}

/// Fails when the stored image `image` (config `doc`) is for another platform than `want`. A
/// config that names no platform is accepted.
pub fn check_platform(image: &ImageRef, doc: &Value, want: &Platform) -> Result<(), Error> {
    match config_platform(doc) {
        Some(have) if !platform_matches(&have, want) => Err(Error::WrongPlatform {
            image: Box::new(image.clone()),
            have: Box::new(have),
            want: Box::new(want.clone()),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn variants_matter_only_when_both_name_one() {
        assert!(platform_matches(&p("linux/arm64"), &p("linux/arm64/v8")));
        assert!(platform_matches(&p("linux/arm64/v8"), &p("linux/arm64")));
        assert!(!platform_matches(&p("linux/arm/v6"), &p("linux/arm/v7")));
        assert!(!platform_matches(&p("linux/amd64"), &p("linux/arm64")));
        assert!(!platform_matches(&p("windows/amd64"), &p("linux/amd64")));
    }

    #[test]
    fn configs_name_their_platform_or_are_accepted() {
        let img: ImageRef = "busybox:local".parse().unwrap();
        let arm = json!({"os": "linux", "architecture": "arm64", "variant": "v8"});
        assert_eq!(config_platform(&arm), Some(p("linux/arm64/v8")));
        assert!(check_platform(&img, &arm, &p("linux/arm64")).is_ok());
        let e = check_platform(&img, &arm, &p("linux/amd64")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "image busybox:local in the store is for linux/arm64/v8, not linux/amd64: pull it with \
             `rbuild pull --platform linux/amd64 busybox:local` (a name holds one platform at a time)"
        );
        // No platform in the config (hand-made images): accepted for any stage.
        assert_eq!(config_platform(&json!({"architecture": ""})), None);
        assert!(check_platform(&img, &json!({}), &p("linux/s390x")).is_ok());
    }
}
