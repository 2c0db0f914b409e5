//! `rbuild images`.

use std::process::ExitCode;

use anyhow::Result;
use rbuild_cache::Store;
use rbuild_types::ImageRef;

use crate::image_cmds::ListFormat;

pub(crate) fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.3}{}", units[u]).replace(".000", "")
    }
}

pub(crate) fn human_ago(created: Option<&str>) -> String {
    let Some(t) = created.and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok()) else {
        return "N/A".into();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match secs {
        0..=59 => "Less than a minute ago".into(),
        60..=3599 => format!("{} minutes ago", secs / 60),
        3600..=86399 => format!("{} hours ago", secs / 3600),
        _ => format!("{} days ago", secs / 86400),
    }
}

pub(crate) fn images(store: &Store, format: ListFormat) -> Result<ExitCode> {
    if format == ListFormat::Json {
        for t in store.list_tags()? {
            let img = rbuild_exporter::load_image(store, &t.manifest)?;
            let (name, tag) = match t.name.parse::<ImageRef>() {
                Ok(r) => (r.name(), r.tag.clone().unwrap_or_else(|| "<none>".into())),
                Err(_) => (t.name.clone(), "<none>".into()),
            };
            let created = img.config.created().clone().unwrap_or_default();
            println!(
                "{}",
                serde_json::json!({
                    "Repository": name,
                    "Tag": tag,
                    "ID": img.config_digest.to_string(),
                    "Digest": t.manifest.to_string(),
                    "CreatedAt": created,
                    "CreatedSince": human_ago(img.config.created().as_deref()),
                    "Size": human_size(img.size),
                    "VirtualSize": img.size,
                })
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<30} {:<12} {:<14} {:<24} SIZE",
        "REPOSITORY", "TAG", "IMAGE ID", "CREATED"
    );
    for t in store.list_tags()? {
        let img = rbuild_exporter::load_image(store, &t.manifest)?;
        let (name, tag) = match t.name.parse::<ImageRef>() {
            Ok(r) => (r.name(), r.tag.clone().unwrap_or_else(|| "<none>".into())),
            Err(_) => (t.name.clone(), "<none>".into()),
        };
        println!(
            "{:<30} {:<12} {:<14} {:<24} {}",
            name,
            tag,
            img.config_digest.short(),
            human_ago(img.config.created().as_deref()),
            human_size(img.size)
        );
    }
    Ok(ExitCode::SUCCESS)
}
