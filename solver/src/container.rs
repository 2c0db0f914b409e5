//! `rbuild run`: a container from an image in the store, through the same sandbox as RUN steps.

use std::path::PathBuf;

use rbuild_cache::Store;
use rbuild_sandbox::{ExitStatus, Rootfs, RunOptions};
use rbuild_types::ImageRef;

use crate::{image, load_config, Error};

/// What to run.
#[derive(Clone, Debug, Default)]
pub struct RunRequest {
    /// Command replacing the image's Cmd (empty: keep it).
    pub cmd: Vec<String>,
    /// `--entrypoint`: replaces the image's Entrypoint (and drops its Cmd unless `cmd` is given).
    pub entrypoint: Option<String>,
    /// `-e K=V` (or `-e K` to pass the host's value), applied over the image's Env.
    pub env: Vec<String>,
    /// `-w DIR`.
    pub workdir: Option<String>,
    /// `-u USER`.
    pub user: Option<String>,
    /// `--hostname`.
    pub hostname: Option<String>,
    /// `--network none`.
    pub network_none: bool,
    /// Pass stdin (`-i`).
    pub interactive: bool,
}

/// Combines Entrypoint and Cmd as Docker does.
pub fn command_line(
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    req: &RunRequest,
) -> Vec<String> {
    let entrypoint = match &req.entrypoint {
        Some(e) if e.is_empty() => vec![],
        Some(e) => vec![e.clone()],
        None => entrypoint.unwrap_or_default(),
    };
    let cmd = if !req.cmd.is_empty() {
        req.cmd.clone()
    } else if req.entrypoint.is_some() {
        vec![]
    } else {
        cmd.unwrap_or_default()
    };
    entrypoint.into_iter().chain(cmd).collect()
}

/// Overrides `env` (`K=V` list) with `-e` values.
pub fn merge_env(mut env: Vec<String>, overrides: &[String]) -> Vec<String> {
    for o in overrides {
        let (k, v) = match o.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => match std::env::var(o) {
                Ok(v) => (o.clone(), v),
                Err(_) => continue,
            },
        };
        let prefix = format!("{k}=");
        match env.iter_mut().find(|e| e.starts_with(&prefix)) {
            Some(e) => *e = format!("{k}={v}"),
            None => env.push(format!("{k}={v}")),
        }
    }
    env
}

/// Runs `image` and waits for it; stdio is inherited. The writable layer is a fresh snapshot that is
/// discarded afterwards.
pub fn run_image(store: &Store, image: &ImageRef, req: &RunRequest) -> Result<ExitStatus, Error> {
    let (_, doc) = load_config(store, image)?;
    let cfg = image::runtime_config(&doc);
    let args = command_line(cfg.entrypoint.clone(), cfg.cmd.clone(), req);
    if args.is_empty() {
        return Err(Error::CopyFailed {
            step: format!("run {image}"),
            message: "no command specified: the image has no Cmd or Entrypoint; give one after the image name".into(),
        });
    }
    let mut lowers: Vec<PathBuf> = Vec::new();
    for d in doc["rootfs"]["diff_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let diff_id = d
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(|_| Error::CopyFailed {
                step: format!("run {image}"),
                message: format!("image config has an invalid diff_id {d}"),
            })?;
        let s = rbuild_exporter::ensure_snapshot(store, &diff_id)?;
        lowers.push(store.snapshot_dir(&s));
    }
    lowers.reverse();
    let user = req.user.clone().unwrap_or(cfg.user.clone());
    let (uid, gid, groups, home) = crate::exec::resolve_user_pub(store, &lowers, &user)?;
    let mut env = merge_env(cfg.env.clone(), &req.env);
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={}", crate::exec::DEFAULT_PATH));
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={home}"));
    }
    let cwd = req.workdir.clone().unwrap_or_else(|| {
        if cfg.working_dir.is_empty() {
            "/".into()
        } else {
            cfg.working_dir.clone()
        }
    });
    let mut spec = rbuild_sandbox::default_spec(args, env, &cwd, req.network_none);
    if let Some(h) = &req.hostname {
        spec.set_hostname(Some(h.clone()));
    }
    if let Some(p) = spec.process_mut() {
        let mut u = p.user().clone();
        u.set_uid(uid);
        u.set_gid(gid);
        u.set_additional_gids(if groups.is_empty() {
            None
        } else {
            Some(groups)
        });
        p.set_user(u);
    }
    if lowers.is_empty() {
        let empty = store.root().join("empty");
        std::fs::create_dir_all(&empty).map_err(|source| Error::Io {
            what: "creating empty layer".into(),
            source,
        })?;
        lowers.push(empty);
    }
    let sb = store.new_snapshot()?;
    let rootfs = Rootfs::Overlay {
        lower: lowers,
        upper: sb.fs_dir(),
        work: sb.work_dir(),
    };
    let c = rbuild_sandbox::spawn(
        &spec,
        RunOptions {
            rootfs,
            stdin: if req.interactive {
                std::process::Stdio::inherit()
            } else {
                std::process::Stdio::null()
            },
            stdout: std::process::Stdio::inherit(),
            stderr: std::process::Stdio::inherit(),
        },
    )?;
    let status = c.wait()?;
    drop(sb);
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn entrypoint_and_cmd_combine_like_docker() {
        let req = RunRequest::default();
        assert_eq!(
            command_line(Some(v(&["/e"])), Some(v(&["a"])), &req),
            v(&["/e", "a"])
        );
        let req = RunRequest {
            cmd: v(&["b"]),
            ..Default::default()
        };
        assert_eq!(
            command_line(Some(v(&["/e"])), Some(v(&["a"])), &req),
            v(&["/e", "b"])
        );
        let req = RunRequest {
            entrypoint: Some("/x".into()),
            ..Default::default()
        };
        assert_eq!(
            command_line(Some(v(&["/e"])), Some(v(&["a"])), &req),
            v(&["/x"])
        );
        assert_eq!(
            command_line(None, Some(v(&["sh"])), &RunRequest::default()),
            v(&["sh"])
        );
    }

    #[test]
    fn env_overrides() {
        let e = merge_env(v(&["A=1", "B=2"]), &v(&["B=3", "C=4"]));
        assert_eq!(e, v(&["A=1", "B=3", "C=4"]));
    }
}
