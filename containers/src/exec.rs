//! `rbuild exec`: a process in a running container, with its namespaces, cgroups, capabilities,
//! seccomp filter, no_new_privs and (unless `-u`) user.

use std::process::Stdio;

use rbuild_cache::Store;
use rbuild_sandbox::Container;

use crate::run::{merge_env, ContainerConfig};
use crate::{cerr, Error};

/// What to run.
#[derive(Clone, Debug, Default)]
pub struct ExecRequest {
    /// Command and arguments.
    pub cmd: Vec<String>,
    /// `-e K=V` over the container's environment.
    pub env: Vec<String>,
    /// `-u USER` (name|uid[:group|gid], looked up in the image).
    pub user: Option<String>,
    /// `-w DIR` (must exist).
    pub workdir: Option<String>,
    /// `-t`.
    pub tty: bool,
}

/// Starts `req.cmd` in the running container `name`; wait for it with [`Container::wait`].
pub fn exec(
    store: &Store,
    name: &str,
    req: &ExecRequest,
    stdio: (Stdio, Stdio, Stdio),
) -> Result<Container, Error> {
    let st = crate::state::get(store, name)?;
    let r = &st.record;
    let Some(pid) = st.pid() else {
        return Err(cerr(format!("container {} is not running", r.name)));
    };
    if r.paused {
        return Err(cerr(format!(
            "container {} is paused, unpause the container before exec",
            r.name
        )));
    }
    if req.cmd.is_empty() {
        return Err(cerr("exec: no command given"));
    }
    let conf = ContainerConfig::load(store, &r.name)?;
    let mut spec = conf.spec.clone();
    let mut p = spec
        .process()
        .clone()
        .ok_or_else(|| cerr(format!("container {}: its spec has no process", r.name)))?;
    p.set_args(Some(req.cmd.clone()));
    p.set_terminal(Some(req.tty));
    let mut env = merge_env(p.env().clone().unwrap_or_default(), &req.env);
    if req.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    if let Some(w) = &req.workdir {
        if !w.starts_with('/') {
            return Err(cerr(format!(
                "exec -w {w}: the working directory must be an absolute path"
            )));
        }
        p.set_cwd(w.into());
    }
    if let Some(u) = &req.user {
        let doc = crate::run::config_of(store, r)?;
        let (lowers, _in_use) = crate::run::lowers_of(store, &doc, &r.image)?;
        let (uid, gid, groups, home) = rbuild_solver::resolve_image_user(store, &lowers, u)?;
        let mut user = p.user().clone();
        user.set_uid(uid);
        user.set_gid(gid);
        user.set_additional_gids((!groups.is_empty()).then_some(groups));
        p.set_user(user);
        env.retain(|e| !e.starts_with("HOME="));
        env.push(format!("HOME={home}"));
    }
    p.set_env(Some(env));
    spec.set_process(Some(p));
    Ok(rbuild_sandbox::exec(pid as u32, &spec, stdio)?)
}
