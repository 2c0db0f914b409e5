//! The compose engine: images, networks, volumes and containers of a project, converged in
//! dependency order.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use rbuild_cache::Store;
use rbuild_compose::{
    Condition, MountSource, Project, Protocol, Restart, Service, LABEL_CONFIG_HASH, LABEL_IMAGE,
    LABEL_ONEOFF, LABEL_PROJECT,
};
use rbuild_containers::lifecycle;
use rbuild_containers::run::{
    self as container, Bind, HealthOverride, RestartPolicy, RunRequest, Tmpfs, Volume,
};
use rbuild_containers::state::{self, Status};
use rbuild_network::{NetworkConfig, NetworkMode, Networks, PortSpec};

use super::{env_list, follow_logs, members, Member};

/// `up` flags.
pub(crate) struct UpOptions {
    pub detach: bool,
    pub build: bool,
    pub no_build: bool,
    pub force_recreate: bool,
    pub timeout: Option<u32>,
}

/// A loaded project and the store it runs in.
pub(crate) struct Engine<'a> {
    store: &'a Store,
    p: Project,
}

fn say(kind: &str, name: &str, what: &str) {
    eprintln!(" {kind} {name}  {what}");
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: i32) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

#[derive(Parser)]
struct BuildCli {
    #[command(flatten)]
    a: crate::build::BuildArgs,
}

#[derive(Parser)]
struct PullCli {
    #[command(flatten)]
    a: crate::image_cmds::PullArgs,
}

#[derive(Parser)]
struct PushCli {
    #[command(flatten)]
    a: crate::image_cmds::PushArgs,
}

impl<'a> Engine<'a> {
    pub fn new(store: &'a Store, p: Project) -> Self {
        Engine { store, p }
    }

    pub fn store(&self) -> &Store {
        self.store
    }

    pub fn project(&self) -> &Project {
        &self.p
    }

    /// `services` and their dependencies, dependencies first (all when empty).
    pub fn selected(&self, services: &[String]) -> Result<Vec<String>> {
        self.p.start_order(services).map_err(|s| {
            if self.p.disabled.contains_key(&s) {
                anyhow!("service {s} is disabled by its profiles (use --profile)")
            } else {
                anyhow!("no such service: {s}")
            }
        })
    }

    fn svc(&self, name: &str) -> &Service {
        &self.p.services[name]
    }

    /// What the container of a service is made from in its image, None when the image is not in
    /// the store: a digest of its configuration without the creation times, so that a rebuild
    /// served from the cache (same layers, same config, new `created`) recreates nothing.
    fn image_id(&self, svc: &Service) -> Option<String> {
        use sha2::{Digest, Sha256};
        let name = self.p.image_name(svc);
        let r: rbuild_types::ImageRef = name.parse().ok()?;
        let m = self.store.get_tag(&r).ok()??;
        let img = rbuild_exporter::load_image(self.store, &m).ok()?;
        let mut v = serde_json::to_value(&img.config).ok()?;
        if let Some(o) = v.as_object_mut() {
            o.remove("created");
            o.remove("history");
        }
        Some(format!(
            "sha256:{}",
            hex::encode(Sha256::digest(v.to_string().as_bytes()))
        ))
    }

    // ---- images ----------------------------------------------------------------------------

    /// Builds the images of the built services among `order`, in parallel.
    pub fn build(&self, order: &[String], no_cache: bool) -> Result<()> {
        let built: Vec<&Service> = order
            .iter()
            .map(|s| self.svc(s))
            .filter(|s| s.build.is_some())
            .collect();
        self.build_services(&built, no_cache)
    }

    fn build_services(&self, services: &[&Service], no_cache: bool) -> Result<()> {
        let mut jobs = Vec::new();
        for svc in services {
            let b = svc.build.as_ref().expect("built service");
            let mut argv: Vec<String> = vec![
                "build".into(),
                "--progress".into(),
                "plain".into(),
                "-t".into(),
                self.p.image_name(svc),
                "-f".into(),
                b.context.join(&b.dockerfile).display().to_string(),
            ];
            for (k, v) in &b.args {
                argv.push("--build-arg".into());
                argv.push(match v {
                    Some(v) => format!("{k}={v}"),
                    None => k.clone(),
                });
            }
            if let Some(t) = &b.target {
                argv.extend(["--target".into(), t.clone()]);
            }
            // `cache_from:` entries are `--cache-from` values (a ref or a `type=...` spec), as
            // docker compose passes them to BuildKit; a missing cache is a warning.
            for c in &b.cache_from {
                argv.extend(["--cache-from".into(), c.clone()]);
            }
            if no_cache {
                argv.push("--no-cache".into());
            }
            argv.push(b.context.display().to_string());
            let args = BuildCli::try_parse_from(argv)
                .map_err(|e| anyhow!("service {}: build: {e}", svc.name))?
                .a;
            jobs.push((svc.name.clone(), args));
        }
        let results: Vec<(String, Result<ExitCode>)> = std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .into_iter()
                .map(|(name, args)| {
                    let store = self.store.clone();
                    s.spawn(move || {
                        say("Service", &name, "Building");
                        let r = crate::build::early_client(&args)
                            .and_then(|early| crate::build::build(store, args, early));
                        (name, r)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| ("?".into(), Err(anyhow!("build thread panicked"))))
                })
                .collect()
        });
        for (name, r) in results {
            match r {
                Ok(c) if c == ExitCode::SUCCESS => say("Service", &name, "Built"),
                Ok(_) => bail!("service {name}: build failed"),
                Err(e) => return Err(e.context(format!("service {name}: build failed"))),
            }
        }
        Ok(())
    }

    /// Builds what `--build` or a missing image asks for, pulls missing images.
    fn ensure_images(&self, order: &[String], o: &UpOptions) -> Result<()> {
        let mut to_build = Vec::new();
        for name in order {
            let svc = self.svc(name);
            let missing = self.image_id(svc).is_none();
            if svc.build.is_some() && (o.build || missing) {
                if o.no_build && missing {
                    bail!(
                        "service {name}: image {} is missing and --no-build forbids building it",
                        self.p.image_name(svc)
                    );
                }
                if !o.no_build {
                    to_build.push(svc);
                }
            } else if missing {
                self.pull_one(svc)?;
            }
        }
        self.build_services(&to_build, false)
    }

    fn pull_one(&self, svc: &Service) -> Result<()> {
        let image = self.p.image_name(svc);
        say("Image", &image, "Pulling");
        let a = PullCli::try_parse_from(["pull", image.as_str()])
            .map_err(|e| anyhow!("{e}"))?
            .a;
        crate::image_cmds::pull(self.store, a)
            .with_context(|| format!("service {}: pulling {image}", svc.name))?;
        Ok(())
    }

    pub fn pull(&self, services: &[String]) -> Result<ExitCode> {
        for name in self.selected(services)? {
            let svc = self.svc(&name);
            if svc.image.is_some() && svc.build.is_none() {
                self.pull_one(svc)?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    pub fn push(&self, services: &[String]) -> Result<ExitCode> {
        for name in self.selected(services)? {
            let svc = self.svc(&name);
            if let (Some(image), Some(_)) = (&svc.image, &svc.build) {
                let a = PushCli::try_parse_from(["push", image.as_str()])
                    .map_err(|e| anyhow!("{e}"))?
                    .a;
                crate::image_cmds::push(self.store, a)?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    // ---- networks and volumes --------------------------------------------------------------

    fn ensure_networks(&self, order: &[String]) -> Result<()> {
        let nets = Networks::open(self.store.root());
        let mut keys: Vec<&String> = order
            .iter()
            .flat_map(|s| self.svc(s).networks.keys())
            .collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let n = &self.p.networks[key];
            if nets.get(&n.name).is_ok() {
                continue;
            }
            if n.external {
                bail!(
                    "network {} declared as external, but could not be found (create it with `rbuild network create {}`)",
                    n.name,
                    n.name
                );
            }
            let subnet = match n.subnets.first() {
                Some(s) => Some(
                    s.parse()
                        .map_err(|_| anyhow!("network {key}: invalid subnet {s:?}"))?,
                ),
                None => None,
            };
            nets.create(
                &n.name,
                &rbuild_network::CreateOptions {
                    subnet,
                    gateway: None,
                    internal: n.internal,
                    labels: self.p.network_labels(key),
                },
            )
            .map_err(|e| anyhow!("network {}: {e}", n.name))?;
            say("Network", &n.name, "Created");
        }
        Ok(())
    }

    fn ensure_volumes(&self, order: &[String]) -> Result<()> {
        for s in order {
            for m in &self.svc(s).volumes {
                let MountSource::Volume { source: Some(key) } = &m.source else {
                    continue;
                };
                let v = &self.p.volumes[key];
                if v.external {
                    if !self.store.volume_dir(&v.name).is_dir() {
                        bail!(
                            "volume {} declared as external, but could not be found (create it with `rbuild volume create {}`)",
                            v.name,
                            v.name
                        );
                    }
                    continue;
                }
                if crate::volumes::create_labeled(self.store, &v.name, &self.p.volume_labels(key))?
                {
                    say("Volume", &v.name, "Created");
                }
            }
        }
        Ok(())
    }

    // ---- containers ------------------------------------------------------------------------

    /// The run request of a service's container.
    fn request(&self, svc: &Service, name: &str, oneoff: bool) -> Result<RunRequest> {
        let mut labels = self.p.service_labels(svc, oneoff);
        if let Some(id) = self.image_id(svc) {
            labels.insert(LABEL_IMAGE.into(), id);
        }
        let (entrypoint, mut cmd) = match &svc.entrypoint {
            Some(e) if e.is_empty() => (Some(String::new()), Vec::new()),
            Some(e) => (Some(e[0].clone()), e[1..].to_vec()),
            None => (None, Vec::new()),
        };
        cmd.extend(svc.command.clone().unwrap_or_default());
        let mut req = RunRequest {
            cmd,
            entrypoint,
            env: env_list(&svc.environment),
            workdir: svc.working_dir.clone(),
            user: svc.user.clone(),
            hostname: svc.hostname.clone(),
            read_only: svc.read_only,
            name: Some(name.to_string()),
            memory: svc.limits.memory.map(|m| m as i64),
            cpus: svc.limits.cpus,
            pids_limit: svc.limits.pids,
            init: svc.init,
            labels,
            restart: match svc.restart {
                Restart::No => RestartPolicy::No,
                Restart::Always => RestartPolicy::Always,
                Restart::OnFailure(n) => RestartPolicy::OnFailure(n),
                Restart::UnlessStopped => RestartPolicy::UnlessStopped,
            },
            stop_signal: svc.stop_signal.clone(),
            // Whole seconds, rounded up (a grace period of 500ms still gives the signal a chance).
            stop_timeout: svc
                .stop_grace_period
                .map(|d| d.as_millis().div_ceil(1000).min(u32::MAX as u128) as u32),
            network: self.network_config(svc),
            ..Default::default()
        };
        if let Some(h) = &svc.healthcheck {
            req.health = HealthOverride {
                disable: h.disable || h.test.first().is_some_and(|t| t == "NONE"),
                test: (!h.test.is_empty()).then(|| h.test.clone()),
                cmd: None,
                interval: h.interval,
                timeout: h.timeout,
                retries: h.retries,
                start_period: h.start_period,
            };
        }
        for t in &svc.tmpfs {
            req.tmpfs.push(Tmpfs {
                target: t.clone(),
                options: vec![],
            });
        }
        for m in &svc.volumes {
            match &m.source {
                MountSource::Bind { source } => req.binds.push(Bind {
                    source: source.clone(),
                    target: m.target.clone(),
                    read_only: m.read_only,
                }),
                MountSource::Volume { source } => {
                    let vol = match source {
                        Some(key) => self.p.volumes[key].name.clone(),
                        None => self.anonymous_volume(name, &m.target)?,
                    };
                    req.volumes.push(Volume {
                        name: vol,
                        target: m.target.clone(),
                        read_only: m.read_only,
                    });
                }
                MountSource::Tmpfs { size } => req.tmpfs.push(Tmpfs {
                    target: m.target.clone(),
                    options: size.map(|s| format!("size={s}")).into_iter().collect(),
                }),
            }
        }
        Ok(req)
    }

    /// An anonymous volume of a container, labelled with the project (removed by `down -v`).
    fn anonymous_volume(&self, container: &str, target: &str) -> Result<String> {
        use sha2::{Digest, Sha256};
        let name = hex::encode(&Sha256::digest(format!("{container}\0{target}"))[..16]);
        let labels = BTreeMap::from([
            (LABEL_PROJECT.to_string(), self.p.name.clone()),
            (
                "com.docker.compose.volume".to_string(),
                format!("{container}:{target}"),
            ),
        ]);
        crate::volumes::create_labeled(self.store, &name, &labels)?;
        Ok(name)
    }

    fn network_config(&self, svc: &Service) -> NetworkConfig {
        let networks = svc
            .networks
            .iter()
            .map(|(key, sn)| {
                let mut aliases = vec![svc.name.clone()];
                aliases.extend(sn.aliases.iter().cloned());
                (self.p.networks[key].name.clone(), aliases)
            })
            .collect();
        NetworkConfig {
            mode: NetworkMode::Networks(networks),
            ports: svc
                .ports
                .iter()
                .map(|p| PortSpec {
                    host_ip: p.host_ip.as_deref().and_then(|i| i.parse().ok()),
                    host_port: p.published,
                    container_port: p.target,
                    protocol: match p.protocol {
                        Protocol::Tcp => rbuild_network::Protocol::Tcp,
                        Protocol::Udp => rbuild_network::Protocol::Udp,
                    },
                })
                .collect(),
            ..Default::default()
        }
    }

    fn create(&self, svc: &Service, name: &str) -> Result<()> {
        let image: rbuild_types::ImageRef = self
            .p
            .image_name(svc)
            .parse()
            .map_err(|e| anyhow!("service {}: image: {e}", svc.name))?;
        let req = self.request(svc, name, false)?;
        container::create(self.store, &image, &req)
            .map_err(|e| anyhow!("service {}: {e}", svc.name))?;
        say("Container", name, "Created");
        Ok(())
    }

    fn start_container(&self, name: &str) -> Result<()> {
        lifecycle::start(self.store, name).map_err(|e| anyhow!("{name}: {e}"))?;
        say("Container", name, "Started");
        Ok(())
    }

    fn remove_container(&self, name: &str, timeout: Option<u32>) -> Result<()> {
        if state::get(self.store, name).is_ok_and(|s| s.status != Status::Exited) {
            let _ = lifecycle::stop(self.store, name, timeout);
        }
        lifecycle::remove(self.store, name, true).map_err(|e| anyhow!("{name}: {e}"))?;
        Ok(())
    }

    /// Creates, recreates or starts the container of `svc` so that it runs the file's config.
    fn converge(&self, svc: &Service, existing: &[Member], o: &UpOptions) -> Result<()> {
        let name = self.p.container_name(svc);
        let found = existing.iter().find(|m| m.st.record.name == name);
        if found.is_none() && state::get(self.store, &name).is_ok() {
            bail!(
                "container name {name} is in use by a container outside project {} (remove it or set container_name)",
                self.p.name
            );
        }
        let Some(m) = found else {
            self.create(svc, &name)?;
            return self.start_container(&name);
        };
        let same = m.conf.labels.get(LABEL_CONFIG_HASH) == Some(&self.p.config_hash(svc))
            && m.conf.labels.get(LABEL_IMAGE) == self.image_id(svc).as_ref();
        if same && !o.force_recreate {
            if m.running() {
                say("Container", &name, "Running");
                return Ok(());
            }
            return self.start_container(&name);
        }
        say("Container", &name, "Recreate");
        self.remove_container(&name, o.timeout)?;
        let image: rbuild_types::ImageRef = self.p.image_name(svc).parse()?;
        let req = self.request(svc, &name, false)?;
        container::create(self.store, &image, &req)
            .map_err(|e| anyhow!("service {}: {e}", svc.name))?;
        say("Container", &name, "Recreated");
        self.start_container(&name)
    }

    /// Waits until each dependency of `svc` meets its condition.
    fn wait_deps(&self, svc: &Service) -> Result<()> {
        for (dep, d) in &svc.depends_on {
            let Some(ds) = self.p.services.get(dep) else {
                continue;
            };
            let name = self.p.container_name(ds);
            let start = Instant::now();
            loop {
                let st = state::get(self.store, &name).map_err(|e| anyhow!("{e}"))?;
                let done = match d.condition {
                    Condition::ServiceStarted => true,
                    Condition::ServiceHealthy => {
                        let health = st.record.health.as_ref().map(|h| h.status.as_str());
                        match health {
                            Some("healthy") => true,
                            Some("unhealthy") => {
                                bail!("dependency failed to start: container {name} is unhealthy")
                            }
                            None if ds.healthcheck.is_none()
                                && ContainerConfigExt::healthcheck(self.store, &name).is_none() =>
                            {
                                bail!("dependency {dep} of {} has no healthcheck (add one, or use condition: service_started)", svc.name)
                            }
                            _ if st.status == Status::Exited => bail!(
                                "dependency failed to start: container {name} exited ({})",
                                st.record.exit_code.unwrap_or(-1)
                            ),
                            _ => false,
                        }
                    }
                    Condition::ServiceCompletedSuccessfully => match st.status {
                        Status::Exited if st.record.exit_code == Some(0) => true,
                        // PID 1 is gone but its monitor has not recorded the status yet.
                        Status::Exited
                            if st.record.exit_code.is_none()
                                && start.elapsed() < Duration::from_secs(30) =>
                        {
                            false
                        }
                        Status::Exited => bail!(
                            "service {dep} didn't complete successfully: exit {}",
                            st.record.exit_code.unwrap_or(-1)
                        ),
                        _ => false,
                    },
                };
                if done {
                    if d.condition != Condition::ServiceStarted {
                        say("Container", &name, "Healthy");
                    }
                    break;
                }
                if start.elapsed() > Duration::from_secs(600) {
                    bail!("timed out waiting for {name}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    pub fn up(&self, services: &[String], o: UpOptions) -> Result<ExitCode> {
        let order = self.selected(services)?;
        self.ensure_images(&order, &o)?;
        self.ensure_networks(&order)?;
        self.ensure_volumes(&order)?;
        let existing = members(self.store, &self.p.name)?;
        for m in &existing {
            if !m.oneoff() && !self.p.services.contains_key(m.service()) {
                eprintln!(
                    "WARN: found orphan container {} of service {:?}, which the file no longer has",
                    m.name(),
                    m.service()
                );
            }
        }
        for name in &order {
            let svc = self.svc(name);
            self.wait_deps(svc)?;
            self.converge(svc, &existing, &o)?;
        }
        if o.detach {
            return Ok(ExitCode::SUCCESS);
        }
        // Attached: follow the logs; Ctrl-C stops the containers (as docker compose).
        use nix::sys::signal::{signal, SigHandler, Signal};
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            let _ = signal(Signal::SIGINT, SigHandler::Handler(on_interrupt));
            let _ = signal(Signal::SIGTERM, SigHandler::Handler(on_interrupt));
        }
        let names: Vec<String> = order
            .iter()
            .map(|s| self.p.container_name(self.svc(s)))
            .collect();
        follow_logs(self.store, &names, true, true, false, Some(&INTERRUPTED))?;
        if INTERRUPTED.load(Ordering::SeqCst) {
            eprintln!("Gracefully stopping... (press Ctrl+C again to force)");
            // SAFETY: restoring the default disposition.
            unsafe {
                let _ = signal(Signal::SIGINT, SigHandler::SigDfl);
            }
            for n in names.iter().rev() {
                let _ = lifecycle::stop(self.store, n, o.timeout);
                say("Container", n, "Stopped");
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    pub fn down(&self, volumes: bool, rmi: Option<&str>, timeout: Option<u32>) -> Result<ExitCode> {
        let list = members(self.store, &self.p.name)?;
        for m in list.iter().rev() {
            say("Container", m.name(), "Stopping");
            self.remove_container(m.name(), timeout)?;
            say("Container", m.name(), "Removed");
        }
        let nets = Networks::open(self.store.root());
        for n in self.p.networks.values() {
            if !n.external && nets.get(&n.name).is_ok() {
                nets.remove(&n.name)
                    .map_err(|e| anyhow!("network {}: {e}", n.name))?;
                say("Network", &n.name, "Removed");
            }
        }
        if volumes {
            for v in self.store.list_volumes()? {
                let labels = crate::volumes::labels_of(self.store, &v);
                let named = self.p.volumes.values().any(|x| x.name == v && !x.external);
                if named || labels.get(LABEL_PROJECT) == Some(&self.p.name) {
                    self.store
                        .remove_volume(&v)
                        .map_err(|e| anyhow!("volume {v}: {e}"))?;
                    say("Volume", &v, "Removed");
                }
            }
        }
        if let Some(mode) = rmi {
            let images: Vec<String> = match mode {
                "local" => self
                    .p
                    .services
                    .values()
                    .filter(|s| s.image.is_none())
                    .map(|s| self.p.image_name(s))
                    .collect(),
                "all" => self
                    .p
                    .services
                    .values()
                    .map(|s| self.p.image_name(s))
                    .collect(),
                other => bail!("--rmi {other}: expected local or all"),
            };
            for i in images {
                if self.image_id_by_name(&i) {
                    crate::image_cmds::rmi(self.store, std::slice::from_ref(&i), false)?;
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    fn image_id_by_name(&self, name: &str) -> bool {
        name.parse::<rbuild_types::ImageRef>()
            .ok()
            .and_then(|r| self.store.get_tag(&r).ok().flatten())
            .is_some()
    }

    fn service_containers(&self, services: &[String]) -> Result<Vec<String>> {
        for s in services {
            if !self.p.services.contains_key(s) {
                bail!("no such service: {s}");
            }
        }
        let order = self.selected(&[])?;
        Ok(order
            .into_iter()
            .filter(|s| services.is_empty() || services.contains(s))
            .map(|s| self.p.container_name(self.svc(&s)))
            .filter(|n| state::get(self.store, n).is_ok())
            .collect())
    }

    pub fn stop(&self, services: &[String], timeout: Option<u32>) -> Result<ExitCode> {
        for n in self.service_containers(services)?.iter().rev() {
            lifecycle::stop(self.store, n, timeout).map_err(|e| anyhow!("{n}: {e}"))?;
            say("Container", n, "Stopped");
        }
        Ok(ExitCode::SUCCESS)
    }

    pub fn start(&self, services: &[String]) -> Result<ExitCode> {
        let names = self.service_containers(services)?;
        if names.is_empty() {
            bail!("no containers to start (run `rbuild compose up` first)");
        }
        for (svc, n) in self
            .selected(&[])?
            .iter()
            .map(|s| (self.svc(s), self.p.container_name(self.svc(s))))
            .filter(|(_, n)| names.contains(n))
        {
            self.wait_deps(svc)?;
            self.start_container(&n)?;
        }
        Ok(ExitCode::SUCCESS)
    }

    /// `compose run`: a new container of `service` running `cmd` in the foreground.
    pub fn run_oneoff(
        &self,
        service: &str,
        rm: bool,
        env: &[String],
        no_deps: bool,
        cmd: Vec<String>,
    ) -> Result<ExitCode> {
        let svc = self
            .p
            .services
            .get(service)
            .ok_or_else(|| anyhow!("no such service: {service}"))?;
        let mut order = self.selected(&[service.to_string()])?;
        order.retain(|s| s != service);
        let o = UpOptions {
            detach: true,
            build: false,
            no_build: false,
            force_recreate: false,
            timeout: None,
        };
        self.ensure_images(&[service.to_string()], &o)?;
        if !no_deps && !order.is_empty() {
            self.up(&order, o)?;
        }
        self.ensure_networks(&[service.to_string()])?;
        self.ensure_volumes(&[service.to_string()])?;
        if !no_deps {
            self.wait_deps(svc)?;
        }
        let suffix: String = {
            let mut b = [0u8; 6];
            let _ = std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
            hex::encode(b)
        };
        let name = format!("{}-{}-run-{suffix}", self.p.name, svc.name);
        let mut req = self.request(svc, &name, true)?;
        if !cmd.is_empty() {
            req.cmd = cmd;
            if svc.entrypoint.as_ref().is_some_and(|e| e.len() > 1) {
                let e = svc.entrypoint.clone().unwrap_or_default();
                req.cmd.splice(0..0, e[1..].iter().cloned());
            }
        }
        req.env.extend(env.iter().cloned());
        req.remove = rm;
        req.restart = RestartPolicy::No;
        req.labels.insert(LABEL_ONEOFF.into(), "True".into());
        let image: rbuild_types::ImageRef = self.p.image_name(svc).parse()?;
        let handle = container::start(
            self.store,
            &image,
            &req,
            (
                std::process::Stdio::inherit(),
                std::process::Stdio::inherit(),
                std::process::Stdio::inherit(),
            ),
        )
        .map_err(|e| anyhow!("service {service}: {e}"))?;
        let outcome = handle.wait().map_err(|e| anyhow!("{e}"))?;
        Ok(ExitCode::from(outcome.code().clamp(0, 255) as u8))
    }
}

/// The HEALTHCHECK a created container will run (the image's when the file sets none).
struct ContainerConfigExt;

impl ContainerConfigExt {
    fn healthcheck(store: &Store, name: &str) -> Option<container::Healthcheck> {
        container::ContainerConfig::load(store, name)
            .ok()
            .and_then(|c| c.healthcheck)
    }
}
