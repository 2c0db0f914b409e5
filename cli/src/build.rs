//! `rbuild build`: Dockerfile -> image in the store, and the `--output`s.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use rbuild_cache::Store;
use rbuild_frontend::BuildOptions;
use rbuild_types::{ImageRef, Platform};

use crate::{parse_ref, progress};

#[derive(Args, Debug)]
pub(crate) struct BuildArgs {
    /// Name and tag, e.g. web:v1 (repeatable).
    #[arg(short = 't', long = "tag")]
    tags: Vec<String>,
    /// Dockerfile path (default CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Build-time variable K=V (repeatable).
    #[arg(long = "build-arg")]
    build_args: Vec<String>,
    /// Stage to build.
    #[arg(long)]
    target: Option<String>,
    /// Network of RUN steps that name none: default (the host's, as BuildKit with
    /// networkMode=host), host, or none (an empty namespace).
    #[arg(long, default_value = "default", value_parser = ["default", "host", "none"])]
    network: String,
    /// Do not use the cache.
    #[arg(long)]
    no_cache: bool,
    /// Progress output.
    #[arg(long, value_enum, default_value = "auto")]
    progress: progress::Mode,
    /// Output, e.g. type=oci,dest=web.tar (repeatable).
    #[arg(short = 'o', long = "output")]
    outputs: Vec<String>,
    /// Target platform, e.g. linux/arm64 (default: the host's). RUN steps execute natively.
    #[arg(long)]
    platform: Option<String>,
    /// Write the image id to this file.
    #[arg(long)]
    iidfile: Option<PathBuf>,
    /// Push the tagged image(s) to their registry (as `--output type=image,push=true`).
    #[arg(long)]
    push: bool,
    /// Always pull base images from their registry, even when the store has them.
    #[arg(long)]
    pull: bool,
    /// Write build metadata (image digest, config digest, names) as JSON to this file.
    #[arg(long)]
    metadata_file: Option<PathBuf>,
    /// Timestamp (seconds since the epoch) for the config, history and file mtimes (overrides
    /// SOURCE_DATE_EPOCH).
    #[arg(long)]
    source_date_epoch: Option<i64>,
    /// Add a line `IP HOST` to the `/etc/hosts` of every RUN step (`HOST:IP` or `HOST=IP`,
    /// repeatable), as `docker build --add-host`.
    #[arg(long = "add-host", value_name = "HOST:IP")]
    add_hosts: Vec<String>,
    /// Run at most N steps at once (default: the number of CPUs).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
    /// Set an image label K=V (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    #[command(flatten)]
    registry: crate::image_cmds::RegistryArgs,
    #[command(flatten)]
    cache: crate::cache_cmds::CacheBuildArgs,
    #[command(flatten)]
    remote_cache: crate::remote_cache::RemoteCacheArgs,
    /// Build context directory.
    context: PathBuf,
}

/// One `--output`, as `docker buildx build --output` takes it.
#[derive(Debug, PartialEq)]
enum Output {
    /// `type=image[,name=N][,push=true]`: the store (tags), optionally pushed.
    Image { names: Vec<String>, push: bool },
    /// `type=oci,dest=F[,tar=false]`.
    Oci {
        dest: PathBuf,
        tar: bool,
        compression: rbuild_exporter::Compression,
    },
    /// `type=docker,dest=F`.
    Docker { dest: PathBuf },
    /// `type=local,dest=DIR[,preserve-special=true]`: without `preserve-special`, device nodes,
    /// set-id bits and file capabilities are left out (as an unprivileged tar extraction).
    Local {
        dest: PathBuf,
        preserve_special: bool,
    },
    /// `type=tar,dest=F`.
    Tar { dest: PathBuf },
}

/// `--add-host HOST:IP` (or `HOST=IP`; an IPv6 address may follow the first `:`).
fn parse_add_host(s: &str) -> Result<(String, String)> {
    let (host, ip) = s
        .split_once('=')
        .or_else(|| s.split_once(':'))
        .ok_or_else(|| anyhow!("--add-host {s}: expected HOST:IP, e.g. db:10.0.0.5"))?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    let addr: std::net::IpAddr = ip
        .parse()
        .map_err(|_| anyhow!("--add-host {s}: {ip:?} is not an IP address"))?;
    if host.is_empty() {
        bail!("--add-host {s}: the host name is empty");
    }
    Ok((host.to_string(), addr.to_string()))
}

fn parse_bool(s: &str, k: &str, v: &str) -> Result<bool> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => bail!("--output {s}: {k} must be true or false"),
    }
}

fn parse_output(s: &str) -> Result<Output> {
    let mut kind = None;
    let mut dest = None;
    let mut names = Vec::new();
    let mut push = false;
    let mut tar = true;
    let mut preserve_special = false;
    let mut compression = rbuild_exporter::Compression::Gzip;
    // A bare path is `type=local,dest=PATH` (or a tar to stdout is not supported: `-`).
    if !s.contains('=') {
        return Ok(Output::Local {
            dest: PathBuf::from(s),
            preserve_special: false,
        });
    }
    for part in s.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            anyhow!("--output {s}: expected key=value pairs like type=oci,dest=out.tar")
        })?;
        match k {
            "type" => kind = Some(v.to_string()),
            "dest" => dest = Some(PathBuf::from(v)),
            "name" => names.extend(v.split(',').map(str::to_string)),
            "push" => push = parse_bool(s, k, v)?,
            "tar" => tar = parse_bool(s, k, v)?,
            "preserve-special" => preserve_special = parse_bool(s, k, v)?,
            "compression" => {
                compression = v.parse().map_err(|_| {
                    anyhow!("--output {s}: compression must be gzip, zstd or uncompressed")
                })?
            }
            // Accepted for compatibility; rbuild's layers are always reproducible when
            // SOURCE_DATE_EPOCH is set.
            "rewrite-timestamp" | "oci-mediatypes" | "force-compression" => {}
            _ => bail!("--output {s}: unknown option {k:?}"),
        }
    }
    let need = |what: &str| -> Result<PathBuf> {
        dest.clone()
            .ok_or_else(|| anyhow!("--output {s}: type={what} needs dest=PATH"))
    };
    let kind =
        kind.ok_or_else(|| anyhow!("--output {s}: missing type=, e.g. type=oci,dest=out.tar"))?;
    if dest.as_deref() == Some(std::path::Path::new("-")) {
        bail!("--output {s}: writing to standard output is not supported; give a file name");
    }
    if preserve_special && kind != "local" {
        bail!(
            "--output {s}: preserve-special applies to type=local only (archives keep everything)"
        );
    }
    Ok(match kind.as_str() {
        "image" | "registry" => Output::Image {
            names,
            push: push || kind == "registry",
        },
        "oci" => Output::Oci {
            dest: need("oci")?,
            tar,
            compression,
        },
        "docker" => Output::Docker {
            dest: need("docker")?,
        },
        "local" => Output::Local {
            dest: need("local")?,
            preserve_special,
        },
        "tar" => Output::Tar { dest: need("tar")? },
        other => bail!(
            "--output {s}: unknown type={other} (supported: image, registry, oci, docker, local, tar)"
        ),
    })
}

/// What a build starts before its store is opened (on an empty store, a new database and its
/// fsyncs): the registry client, whose HTTP clients a thread makes for every registry the build
/// will surely talk to (each `--cache-from` registry, each `FROM` naming a registry host), and
/// the reading of the `--cache-from` caches (their manifests and configs), so that the first
/// pull does not wait for the TLS roots and the remote layers start coming in at once.
pub(crate) struct Early {
    client: Arc<rbuild_registry::Client>,
    remote: Option<std::thread::JoinHandle<(RemoteRead, Vec<String>)>>,
}

/// The `--cache-from` caches, read.
type RemoteRead = Result<Option<Arc<rbuild_solver::RemoteCache>>>;

impl Early {
    /// The `--cache-from` caches; the warnings their reading gave go to `warn`.
    fn remote_cache(&mut self, args: &BuildArgs, warn: &dyn Fn(String)) -> RemoteRead {
        let Some(h) = self.remote.take() else {
            return args.remote_cache.import(self.client.clone(), warn);
        };
        let (r, warnings) = h.join().unwrap_or_else(|_| {
            let e = anyhow!("internal error while reading --cache-from");
            (Err(e), Vec::new())
        });
        warnings.into_iter().for_each(warn);
        r
    }
}

/// Starts what [`Early`] holds for a build with `args`.
pub(crate) fn early_client(args: &BuildArgs) -> Result<Early> {
    let client = Arc::new(args.registry.client(platform_of(args)?)?);
    let mut registries: Vec<String> = args.remote_cache.registries();
    if let Ok(text) = std::fs::read_to_string(dockerfile_path(args)) {
        registries.extend(from_registries(&text));
    }
    registries.sort();
    registries.dedup();
    if !registries.is_empty() {
        let c = client.clone();
        // Detached: nothing waits for it (a request needing the client takes the same lock).
        let _ = std::thread::Builder::new()
            .name("registry-warmup".into())
            .spawn(move || registries.iter().for_each(|r| c.prepare(r)));
    }
    let remote = (!args.remote_cache.cache_from.is_empty()).then(|| {
        let (c, caches) = (client.clone(), args.remote_cache.clone());
        std::thread::Builder::new()
            .name("cache-from".into())
            .spawn(move || {
                let warnings = std::sync::Mutex::new(Vec::new());
                let r = caches.import(c, &|w| {
                    warnings.lock().unwrap_or_else(|p| p.into_inner()).push(w)
                });
                (r, warnings.into_inner().unwrap_or_else(|p| p.into_inner()))
            })
    });
    let remote = remote.transpose().context("start reading --cache-from")?;
    Ok(Early { client, remote })
}

/// Registry hosts named literally by `FROM` lines (no variables; stage names have no host).
fn from_registries(dockerfile: &str) -> Vec<String> {
    dockerfile
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            if !words.next()?.eq_ignore_ascii_case("FROM") {
                return None;
            }
            let image = words.find(|w| !w.starts_with("--"))?;
            if image.contains('$') {
                return None;
            }
            image.parse::<ImageRef>().ok()?.registry
        })
        .collect()
}

/// `-f FILE`, else `Dockerfile` in the context; a file named `Dockerfile` that is absent falls
/// back to `dockerfile` beside it (as BuildKit).
fn dockerfile_path(args: &BuildArgs) -> std::path::PathBuf {
    let dockerfile = args
        .file
        .clone()
        .unwrap_or_else(|| args.context.join("Dockerfile"));
    match dockerfile.file_name() {
        Some(n) if n == "Dockerfile" && !dockerfile.exists() => {
            let lower = dockerfile.with_file_name("dockerfile");
            if lower.exists() {
                lower
            } else {
                dockerfile
            }
        }
        _ => dockerfile,
    }
}

fn platform_of(args: &BuildArgs) -> Result<Option<Platform>> {
    // Any platform: base images are pulled for it and the image is labelled with it; RUN steps
    // execute natively (a foreign one needs an emulator in binfmt_misc).
    args.platform
        .as_ref()
        .map(|p| {
            p.parse::<Platform>()
                .map_err(|e| anyhow!("--platform: {e}"))
        })
        .transpose()
}

pub(crate) fn build(store: Store, args: BuildArgs, mut early: Early) -> Result<ExitCode> {
    let client = early.client.clone();
    let started = Instant::now();
    let tags: Vec<ImageRef> = args
        .tags
        .iter()
        .map(|t| parse_ref(t))
        .collect::<Result<_>>()?;
    let outputs: Vec<Output> = args
        .outputs
        .iter()
        .map(|o| parse_output(o))
        .collect::<Result<_>>()?;
    args.remote_cache.check()?;
    let platform = platform_of(&args)?;
    if !args.context.is_dir() {
        bail!(
            "unable to prepare context: path {:?} not found or not a directory",
            args.context.display().to_string()
        );
    }
    let dockerfile = dockerfile_path(&args);
    let dockerfile_name = dockerfile.display().to_string();
    let text = std::fs::read_to_string(&dockerfile).with_context(|| {
        format!("failed to read dockerfile: open {dockerfile_name}: no such file or not readable; pass -f PATH or add a Dockerfile to the context")
    })?;
    let progress = progress::Progress::new(args.progress).with_explain(args.cache.explain_cache);
    progress.internal(
        1,
        &format!(
            "[internal] load build definition from {}",
            dockerfile
                .file_name()
                .map(|f| f.to_string_lossy())
                .unwrap_or_default()
        ),
        Some(&format!("transferring dockerfile: {}B done", text.len())),
        started.elapsed(),
    );
    let mut build_args = Vec::new();
    for a in &args.build_args {
        match a.split_once('=') {
            Some((k, v)) => build_args.push((k.to_string(), v.to_string())),
            None => {
                if let Ok(v) = std::env::var(a) {
                    build_args.push((a.clone(), v));
                }
            }
        }
    }
    if args.source_date_epoch.is_none() && !build_args.iter().any(|(k, _)| k == "SOURCE_DATE_EPOCH")
    {
        if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
            build_args.push(("SOURCE_DATE_EPOCH".into(), v.trim().to_string()));
        }
    }
    let opts = BuildOptions {
        build_args,
        target: args.target.clone(),
        platform,
        dockerfile_name: dockerfile_name.clone(),
        add_hosts: args
            .add_hosts
            .iter()
            .map(|h| parse_add_host(h))
            .collect::<Result<_>>()?,
    };
    // One client (one connection pool and token cache per registry, see `early_client`) for
    // the base image pulls and the remote caches; the caches' configs are read while the
    // frontend pulls.
    let resolver = crate::image_cmds::PullingResolver::new(&store, &client, args.pull);
    // The target stage's remote layers start coming in as soon as the caches are read, while
    // the frontend still pulls the base images (the solve's own prefetch then finds them taken).
    let target_stage = target_stage_of(&text, args.target.as_deref());
    let dockerfile_file = dockerfile
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (graph, result, epoch, solve_opts) = std::thread::scope(|outer| -> Result<_> {
        // Whatever way this closure ends (an error included), the prefetch takes no new layer.
        let _stop_prefetch = StopOnDrop(&stop);
        let (mut graph, remote) = std::thread::scope(|sc| {
            let import = sc.spawn(|| {
                let r = early
                    .remote_cache(&args, &|w| progress.event(rbuild_solver::Event::Warning(w)));
                if let (Ok(Some(remote)), Some(stage)) = (&r, target_stage) {
                    let (remote, store, file, stop) =
                        (remote.clone(), &store, &dockerfile_file, &stop);
                    outer.spawn(move || {
                        rbuild_solver::prefetch_stage(&remote, store, file, stage, stop)
                    });
                }
                r
            });
            let graph =
                rbuild_frontend::convert(&text, &opts, &resolver).map_err(|e| anyhow!("{e}"));
            let remote = import
                .join()
                .map_err(|_| anyhow!("internal error while reading --cache-from"))?;
            Ok::<_, anyhow::Error>((graph?, remote?))
        })?;
        if args.network == "none" {
            // RUN steps without --network get an empty namespace; the mode is part of their cache key.
            for n in graph.graph.node_weights_mut() {
                if let rbuild_frontend::Op::Exec(e) = &mut n.op {
                    if e.network == rbuild_frontend::NetworkMode::Default {
                        e.network = rbuild_frontend::NetworkMode::None;
                    }
                }
            }
        }
        for l in &args.labels {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| anyhow!("--label {l}: expected KEY=VALUE"))?;
            let target = graph.target;
            graph.stages[target]
                .config
                .labels
                .insert(k.to_string(), v.to_string());
        }
        // `--source-date-epoch` wins; else `--build-arg SOURCE_DATE_EPOCH` or a global ARG default
        // (the environment's SOURCE_DATE_EPOCH was passed as that build arg, as buildx does).
        let epoch = args.source_date_epoch.or(graph.source_date_epoch);
        let solve_opts = rbuild_solver::SolveOptions {
            context: args.context.clone(),
            dockerfile: dockerfile.clone(),
            dockerfile_name,
            no_cache: args.no_cache,
            no_cache_filter: args.cache.no_cache_filter.clone(),
            forwarded: args.cache.forwarded()?,
            first_vertex: 2,
            source_date_epoch: epoch,
            remote,
            jobs: args.jobs.map_or(0, usize::from),
        };
        let sink = |ev| progress.event(ev);
        let result = rbuild_solver::solve(&store, &graph, &solve_opts, &sink);
        Ok((
            graph,
            result.map_err(|e| anyhow!("{e}"))?,
            epoch,
            solve_opts,
        ))
    })?;
    let result = args.remote_cache.apply_inline(&store, result)?;
    let export_start = Instant::now();
    let id = graph.graph.node_count() + 2;
    progress.event(rbuild_solver::Event::Vertex {
        id,
        name: "exporting to image".into(),
    });
    let mut names = tags.clone();
    let mut push_names: Vec<ImageRef> = Vec::new();
    for o in &outputs {
        if let Output::Image { names: n, push } = o {
            for x in n {
                let r = parse_ref(x)?;
                if !names.contains(&r) {
                    names.push(r.clone());
                }
                if *push {
                    push_names.push(r);
                }
            }
            if *push && n.is_empty() {
                push_names.extend(tags.iter().cloned());
            }
        }
    }
    if args.push {
        push_names.extend(tags.iter().cloned());
    }
    push_names.dedup();
    if (args.push
        || outputs
            .iter()
            .any(|o| matches!(o, Output::Image { push: true, .. })))
        && push_names.is_empty()
    {
        bail!("--push needs a name to push to: add -t REGISTRY/NAME:TAG");
    }
    for t in &names {
        store.set_tag(t, &result.manifest)?;
    }
    for o in &outputs {
        match o {
            Output::Image { .. } => {}
            Output::Oci {
                dest,
                tar,
                compression,
            } => {
                if *tar {
                    rbuild_exporter::export_oci_archive(
                        &store,
                        &result.manifest,
                        &names,
                        dest,
                        *compression,
                    )
                } else {
                    rbuild_exporter::export_oci_dir(
                        &store,
                        &result.manifest,
                        &names,
                        dest,
                        *compression,
                    )
                }
                .with_context(|| format!("writing OCI layout {}", dest.display()))?;
            }
            Output::Docker { dest } => {
                rbuild_exporter::export_docker_archive(&store, &result.manifest, &names, dest)
                    .with_context(|| format!("writing docker archive {}", dest.display()))?;
            }
            Output::Local {
                dest,
                preserve_special,
            } => {
                rbuild_exporter::export_local_dir(
                    &store,
                    &result.manifest,
                    dest,
                    *preserve_special,
                )
                .with_context(|| format!("writing the filesystem into {}", dest.display()))?;
            }
            Output::Tar { dest } => {
                rbuild_exporter::export_rootfs_tar(&store, &result.manifest, dest, epoch)
                    .with_context(|| format!("writing the filesystem tar {}", dest.display()))?;
            }
        }
    }
    let mut pushed = None;
    for r in &push_names {
        let d = client
            .push(
                &store,
                &result.manifest,
                r,
                rbuild_exporter::Compression::Gzip,
            )
            .with_context(|| format!("pushing {r}"))?;
        eprintln!("pushing {r} done: {d}");
        pushed = Some(d);
    }
    let warn = |w| progress.event(rbuild_solver::Event::Warning(w));
    for msg in args.remote_cache.export(
        &store,
        &client,
        &result,
        solve_opts.remote.as_deref(),
        &warn,
    )? {
        eprintln!("{msg}");
    }
    progress.event(rbuild_solver::Event::Done {
        id,
        elapsed: export_start.elapsed(),
    });
    if let Some(f) = &args.iidfile {
        std::fs::write(f, result.config.to_string())
            .with_context(|| format!("writing {}", f.display()))?;
    }
    if let Some(f) = &args.metadata_file {
        let meta = serde_json::json!({
            "containerimage.config.digest": result.config.to_string(),
            "containerimage.digest": pushed.as_ref().unwrap_or(&result.manifest).to_string(),
            "image.name": names.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(","),
        });
        std::fs::write(f, serde_json::to_string_pretty(&meta)?)
            .with_context(|| format!("writing {}", f.display()))?;
    }
    eprintln!("writing image {} done", result.config);
    for t in &names {
        eprintln!("naming to {t} done");
    }
    Ok(ExitCode::SUCCESS)
}

/// The position in the Dockerfile of the stage `--target` names (else the last stage), read
/// from the parsed text before the frontend resolves anything (as the frontend picks it);
/// `None` when the text does not parse or names no such stage (the frontend reports that).
fn target_stage_of(text: &str, target: Option<&str>) -> Option<usize> {
    let df = rbuild_frontend::parse(text).ok()?;
    let froms: Vec<_> = df
        .instructions
        .iter()
        .filter(|i| i.command.eq_ignore_ascii_case("from"))
        .collect();
    match target {
        None => froms.len().checked_sub(1),
        Some(t) => froms.iter().position(|i| {
            i.args.len() >= 3
                && i.args[1].eq_ignore_ascii_case("as")
                && i.args[2].eq_ignore_ascii_case(t)
        }),
    }
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_lines_naming_a_registry_host_are_warmed() {
        let df = "FROM 127.0.0.1:5000/library/busybox:latest AS build\n\
                  from --platform=linux/amd64 reg.example.com/x/y@sha256:0000000000000000000000000000000000000000000000000000000000000000\n\
                  FROM build\nFROM busybox:local\nFROM ${BASE}/z\nRUN echo FROM other.io/a\n";
        assert_eq!(
            from_registries(df),
            vec!["127.0.0.1:5000".to_string(), "reg.example.com".to_string()]
        );
    }

    #[test]
    fn local_outputs_take_preserve_special() {
        assert_eq!(
            parse_output("type=local,dest=out").unwrap(),
            Output::Local {
                dest: "out".into(),
                preserve_special: false
            }
        );
        assert_eq!(
            parse_output("type=local,dest=out,preserve-special=true").unwrap(),
            Output::Local {
                dest: "out".into(),
                preserve_special: true
            }
        );
        assert_eq!(
            parse_output("out").unwrap(),
            Output::Local {
                dest: "out".into(),
                preserve_special: false
            }
        );
        let e = parse_output("type=oci,dest=o.tar,preserve-special=true").unwrap_err();
        assert!(e.to_string().contains("type=local only"), "{e}");
        assert!(parse_output("type=local,dest=o,preserve-special=maybe").is_err());
    }

    #[test]
    fn the_target_stage_is_found_in_the_text() {
        let df = "ARG X=1\nFROM a AS Build\nRUN x\nfrom b as final\nRUN y\nFROM c\n";
        assert_eq!(super::target_stage_of(df, None), Some(2));
        assert_eq!(super::target_stage_of(df, Some("build")), Some(0));
        assert_eq!(super::target_stage_of(df, Some("FINAL")), Some(1));
        assert_eq!(super::target_stage_of(df, Some("nope")), None);
        assert_eq!(super::target_stage_of("RUN \"unterminated", None), None);
    }
}
