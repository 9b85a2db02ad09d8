//! The checks of one `[[model]]`: its identity, command, limits, isolation, GPUs, Python
//! environment and `[model.serve]`.

use super::caps::{self, CapSet};
use super::check::*;
use super::cpus;
use super::gpus::{GpuDemand, GpuRef};
use super::python::PythonSpec;
use super::raw::*;
use super::types::*;
use crate::contract::{self, Mode};
use crate::gpu::GpuUuid;
use crate::size::{QuotaSpec, parse_quota};
use cuvisor_common::ledger::{self, valid_model_name};
use std::collections::BTreeMap;
use std::time::Duration;
use toml::Spanned;

/// `gpus = N` (1 to 16) or `gpus = [0, "GPU-…"]` (NVML indices or UUIDs).
pub(super) fn check_gpus(c: &mut Checker, v: &Spanned<toml::Value>) -> Option<GpuDemand> {
    const FORMS: &str = "expected a number of GPUs from 1 to 16, or a list of GPU indices and \
                         UUIDs such as [0, 1] or [\"GPU-6f2d0e7a-1b3c-4d5e-8f90-a1b2c3d4e5f6\"]";
    let max = ledger::MAX_GPUS;
    match v.get_ref() {
        toml::Value::Integer(n) if (1..=max as i64).contains(n) => {
            Some(GpuDemand::Count(*n as u32))
        }
        toml::Value::Array(items) if !items.is_empty() && items.len() <= max => {
            let mut refs = Vec::new();
            for item in items {
                match item {
                    toml::Value::Integer(i) if (0..=u32::MAX as i64).contains(i) => {
                        refs.push(GpuRef::Index(*i as u32))
                    }
                    toml::Value::String(u) => match u.parse::<GpuUuid>() {
                        Ok(uuid) => refs.push(GpuRef::Uuid(uuid)),
                        Err(e) => {
                            c.error(v, format!("gpus: {e}"));
                            return None;
                        }
                    },
                    other => {
                        c.error(v, format!("gpus: {other} is not a GPU: {FORMS}"));
                        return None;
                    }
                }
            }
            Some(GpuDemand::These(refs))
        }
        other => {
            c.error(v, format!("gpus = {other}: {FORMS}"));
            None
        }
    }
}

/// The next block of host ids in the supervisor's `userns_range`.
pub(super) fn assign_host_ids(
    c: &mut Checker,
    supervisor: &SupervisorConfig,
    earlier: &[ModelConfig],
    line: usize,
) -> Option<u32> {
    let Some((first, last)) = supervisor.userns_range else {
        c.error_at(
            line,
            "isolation.user needs host ids for the namespace: set userns_range in [supervisor]",
        );
        return None;
    };
    let taken = earlier.iter().filter(|m| m.host_ids.is_some()).count() as u64;
    let start = u64::from(first) + taken * u64::from(USERNS_BLOCK);
    if start + u64::from(USERNS_BLOCK) - 1 > u64::from(last) {
        c.error_at(
            line,
            format!(
                "userns_range {first}-{last} has no room for another {USERNS_BLOCK} ids (each model with isolation.user takes that many)"
            ),
        );
        return None;
    }
    Some(start as u32)
}

/// Variables the supervisor sets for every worker; a model cannot set them itself.
/// What cuvisor sets from `gpus`, when the model has it.
pub(super) const PLACEMENT_ENV: &str = "CUDA_VISIBLE_DEVICES";

pub(super) fn check_model(c: &mut Checker, m: &RawModel, line: usize) -> Option<ModelConfig> {
    let errors_before = c.errors.len();
    let name = match &m.name {
        None => {
            c.error_at(line, "a [[model]] needs a name");
            String::new()
        }
        Some(n) if valid_model_name(n.get_ref()) => n.get_ref().clone(),
        Some(n) => {
            c.error(n, format!("name = \"{}\": expected 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'", n.get_ref()));
            String::new()
        }
    };
    let command = match &m.command {
        Some(cmd) if !c.no_nul("command", cmd) => String::new(),
        Some(cmd) if !cmd.get_ref().trim().is_empty() => cmd.get_ref().clone(),
        Some(cmd) => {
            c.error(cmd, "command is empty");
            String::new()
        }
        None => {
            c.error_at(line, format!("model \"{name}\" needs a command"));
            String::new()
        }
    };
    for a in &m.args {
        c.no_nul("args", a);
    }
    let mut env = BTreeMap::new();
    for (k, v) in &m.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.get_ref().contains('\0') {
            c.error(v, format!("env {k:?}: not a valid environment variable"));
        } else if contract::SET_BY_CUVISOR.contains(&k.as_str()) {
            c.error(
                v,
                format!(
                    "env {k}: set by cuvisor from this model's settings (name, gpu_quota, mode, gpus)"
                ),
            );
        } else if k == PLACEMENT_ENV && m.gpus.is_some() {
            c.error(
                v,
                format!("env {k}: set by cuvisor from this model's gpus; remove one of the two"),
            );
        } else {
            env.insert(k.clone(), v.get_ref().clone());
        }
    }
    let cwd = m.cwd.as_ref().and_then(|v| c.absolute("cwd", v));
    let (mut uid, mut gid) = (None, None);
    if let Some(u) = &m.user {
        match c.host.user(u.get_ref()) {
            Some((id, _)) if id == NO_CHANGE_ID => c.error(
                u,
                format!(
                    "user = \"{}\": {NO_CHANGE_ID} is not a usable id (setresuid reads it as \"no change\")",
                    u.get_ref()
                ),
            ),
            Some((id, primary)) => {
                uid = Some(id);
                gid = Some(primary);
            }
            None => c.error(u, format!("user = \"{}\": no such user", u.get_ref())),
        }
    }
    if let Some(g) = &m.group {
        match c.host.group(g.get_ref()) {
            Some(id) if id == NO_CHANGE_ID => c.error(
                g,
                format!(
                    "group = \"{}\": {NO_CHANGE_ID} is not a usable id (setresgid reads it as \"no change\")",
                    g.get_ref()
                ),
            ),
            Some(id) => gid = Some(id),
            None => c.error(g, format!("group = \"{}\": no such group", g.get_ref())),
        }
    }
    let gpu_quota = m
        .gpu_quota
        .as_ref()
        .and_then(|q| match parse_quota(q.get_ref()) {
            Ok(QuotaSpec::Bytes(0)) => {
                c.error(q, "gpu_quota = \"0\": a quota must be greater than 0");
                None
            }
            Ok(spec) => Some(spec),
            Err(e) => {
                c.error(q, format!("gpu_quota: {e}"));
                None
            }
        });
    let mode = match &m.mode {
        None => Mode::Managed,
        Some(v) => Mode::parse(v.get_ref()).unwrap_or_else(|| {
            c.error(v, format!("mode = \"{}\": {}", v.get_ref(), Mode::FORMS));
            Mode::Managed
        }),
    };
    let memory_limit = m.memory_limit.as_ref().and_then(|v| {
        let expected = "a size greater than 0, e.g. 32GiB";
        c.size("memory_limit", v, 1..=u64::MAX, expected)
    });
    let cpu_limit = m.cpu_limit.as_ref().and_then(|v| {
        let cores = *v.get_ref();
        if (0.01..=4096.0).contains(&cores) {
            Some(cores)
        } else {
            c.error(v, format!("cpu_limit = {cores}: expected a number of CPU cores from 0.01 to 4096, e.g. 2.5"));
            None
        }
    });
    let swap_timeout = c.duration("swap_timeout", &m.swap_timeout, DEFAULT_SWAP_TIMEOUT);
    if let Some(v) = &m.swap_timeout
        && swap_timeout > MAX_SWAP_TIMEOUT
    {
        c.error(v, format!("swap_timeout = \"{}\": at most 5m", v.get_ref()));
    }
    let cpus = m
        .cpus
        .as_ref()
        .and_then(|v| match v.get_ref().parse::<cpus::CpuSet>() {
            Err(why) => {
                c.error(v, format!("cpus = {why}"));
                None
            }
            Ok(set) => match c.host.online_cpus() {
                Some(host) if !set.is_subset(&host) => {
                    c.error(
                        v,
                        format!(
                            "cpus = \"{}\": this host's online CPUs are {host}",
                            v.get_ref()
                        ),
                    );
                    None
                }
                _ => Some(set),
            },
        });
    let pids_limit = m.pids_limit.as_ref().and_then(|v| {
        if *v.get_ref() >= 1 {
            Some(*v.get_ref() as u64)
        } else {
            c.error(
                v,
                format!("pids_limit = {}: expected at least 1", v.get_ref()),
            );
            None
        }
    });
    let mut instances = match &m.instances {
        None => 1,
        Some(v) if (1..=64).contains(v.get_ref()) => *v.get_ref() as u32,
        Some(v) => {
            c.error(v, format!("instances = {}: expected 1 to 64", v.get_ref()));
            1
        }
    };
    let mut min_instances = None;
    if m.min_instances.is_some() || m.max_instances.is_some() {
        if let Some(v) = &m.instances {
            c.error(
                v,
                "instances is the fixed case: with min_instances and max_instances, leave it out",
            );
        }
        if m.serve.is_none() {
            c.error_at(line, "min_instances and max_instances follow the front door's traffic: the model needs [model.serve]");
        }
        let max = match &m.max_instances {
            None => 1,
            Some(v) if (1..=64).contains(v.get_ref()) => *v.get_ref() as u32,
            Some(v) => {
                c.error(
                    v,
                    format!("max_instances = {}: expected 1 to 64", v.get_ref()),
                );
                1
            }
        };
        let min = match &m.min_instances {
            None => 0,
            Some(v) if (0..=i64::from(max)).contains(v.get_ref()) => *v.get_ref() as u32,
            Some(v) => {
                c.error(
                    v,
                    format!(
                        "min_instances = {}: expected 0 (scale to zero) to max_instances ({max})",
                        v.get_ref()
                    ),
                );
                0
            }
        };
        instances = max;
        min_instances = Some(min);
    }
    let restart = match m.restart.as_ref().map(|v| (v, v.get_ref().as_str())) {
        None | Some((_, "on-failure")) => RestartPolicy::OnFailure,
        Some((_, "always")) => RestartPolicy::Always,
        Some((_, "never")) => RestartPolicy::Never,
        Some((v, other)) => {
            c.error(
                v,
                format!("restart = \"{other}\": expected always, on-failure or never"),
            );
            RestartPolicy::OnFailure
        }
    };
    let backoff_initial = c.duration(
        "backoff_initial",
        &m.backoff_initial,
        Duration::from_secs(1),
    );
    let backoff_max = c.duration("backoff_max", &m.backoff_max, Duration::from_secs(60));
    if backoff_initial.is_zero() || backoff_initial > backoff_max {
        let at = m.backoff_initial.as_ref().or(m.backoff_max.as_ref());
        let msg = "backoff_initial must be greater than 0 and at most backoff_max";
        match at {
            Some(v) => c.error(v, msg),
            None => c.error_at(line, msg),
        }
    }
    let isolation = m.isolation.as_ref().map_or_else(Isolation::default, |i| {
        let r = i.get_ref();
        let d = Isolation::default();
        Isolation {
            pid: r.pid.unwrap_or(d.pid),
            mount: r.mount.unwrap_or(d.mount),
            ipc: r.ipc.unwrap_or(d.ipc),
            uts: r.uts.unwrap_or(d.uts),
            network: r.network.unwrap_or(d.network),
            user: r.user.unwrap_or(d.user),
        }
    });
    if isolation.user && (m.user.is_some() || m.group.is_some()) {
        c.error_at(
            line,
            "isolation.user runs the worker as root in its own user namespace: remove user and group",
        );
    }
    let mut bind_ro = Vec::new();
    for b in &m.bind_ro {
        if let Some(p) = c.absolute("bind_ro", b) {
            if !c.host.exists(&p) {
                c.error(
                    b,
                    format!("bind_ro \"{}\": no such file or directory", p.display()),
                );
            } else if !isolation.mount {
                c.error(b, "bind_ro needs isolation.mount = true");
            } else {
                bind_ro.push(p);
            }
        }
    }
    let mut capabilities = CapSet::default();
    for cap in &m.capabilities {
        match caps::by_name(cap.get_ref()) {
            Some(n) => capabilities.0 |= 1 << n,
            None => c.error(
                cap,
                format!(
                    "capabilities: \"{}\" is not a capability (expected a name such as CAP_NET_BIND_SERVICE)",
                    cap.get_ref()
                ),
            ),
        }
    }
    let gpus = m.gpus.as_ref().and_then(|v| check_gpus(c, v));
    let serve = m.serve.as_ref().and_then(|v| check_serve(c, v, &isolation));
    let python = m.python.as_ref().and_then(|v| check_python(c, v));
    (c.errors.len() == errors_before).then_some(ModelConfig {
        name,
        command,
        args: m.args.iter().map(|a| a.get_ref().clone()).collect(),
        env,
        cwd,
        uid,
        gid,
        gpu_quota,
        gpus,
        mode,
        memory_limit,
        cpu_limit,
        cpus,
        pids_limit,
        freeze_hibernated: m.freeze_hibernated.unwrap_or(false),
        swap_timeout,
        instances,
        min_instances,
        restart,
        backoff_initial,
        backoff_max,
        isolation,
        bind_ro,
        capabilities,
        host_ids: None,
        serve,
        python,
    })
}

/// `[model.serve]`: a path for health, a start-up timeout, aliases, a body limit.
pub(super) fn check_python(c: &mut Checker, v: &Spanned<RawPython>) -> Option<PythonSpec> {
    let r = v.get_ref();
    let requirements = r.requirements.as_ref().and_then(|p| {
        let path = c.absolute("python.requirements", p)?;
        if c.host.is_file(&path) {
            Some(path)
        } else {
            c.error(
                p,
                format!("python.requirements = \"{}\": no such file", path.display()),
            );
            None
        }
    });
    if r.requirements.is_none() && r.packages.is_empty() {
        c.error(
            v,
            "python needs requirements (a requirements file) or packages (a list)",
        );
        return None;
    }
    let version = r.version.as_ref().and_then(|ver| {
        let ok = !ver.get_ref().is_empty()
            && ver
                .get_ref()
                .split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if ok {
            Some(ver.get_ref().clone())
        } else {
            c.error(
                ver,
                format!(
                    "python.version = \"{}\": expected a version such as 3.11",
                    ver.get_ref()
                ),
            );
            None
        }
    });
    Some(PythonSpec {
        requirements,
        packages: r.packages.clone(),
        version,
        index_url: r.index_url.clone(),
        find_links: r.find_links.clone(),
        offline: r.offline.unwrap_or(false),
    })
}

pub(super) fn check_serve(
    c: &mut Checker,
    v: &Spanned<RawServe>,
    isolation: &Isolation,
) -> Option<Serve> {
    let r = v.get_ref();
    let health = match &r.health {
        Some(h) if h.get_ref().starts_with('/') && !h.get_ref().contains(char::is_whitespace) => {
            h.get_ref().clone()
        }
        Some(h) => {
            c.error(
                h,
                format!(
                    "serve.health = \"{}\": expected a path such as /health",
                    h.get_ref()
                ),
            );
            return None;
        }
        None => {
            c.error(v, "serve needs health: the path that answers 200 once the server is ready, e.g. /health");
            return None;
        }
    };
    if isolation.network {
        c.error(
            v,
            "serve: the front door reaches the model on loopback, which isolation.network = true hides: set it to false",
        );
    }
    let ready_timeout = c.duration(
        "serve.ready_timeout",
        &r.ready_timeout,
        Duration::from_secs(600),
    );
    let mut aliases = Vec::new();
    for a in &r.aliases {
        if valid_model_name(a.get_ref())
            || (!a.get_ref().is_empty()
                && a.get_ref().len() <= 128
                && !a.get_ref().contains(char::is_control))
        {
            aliases.push(a.get_ref().clone());
        } else {
            c.error(
                a,
                format!("serve.aliases: {:?} is not a model name", a.get_ref()),
            );
        }
    }
    let max_body = r
        .max_body
        .as_ref()
        .and_then(|v| {
            let expected = "a size greater than 0, e.g. 16MiB";
            c.size("serve.max_body", v, 1..=u64::MAX, expected)
        })
        .unwrap_or(16 << 20);
    let mut count = |key: &str,
                     v: &Option<Spanned<i64>>,
                     range: std::ops::RangeInclusive<i64>,
                     default: usize| match v {
        None => default,
        Some(n) if range.contains(n.get_ref()) => *n.get_ref() as usize,
        Some(n) => {
            c.error(
                n,
                format!(
                    "serve.{key} = {}: expected {} to {}",
                    n.get_ref(),
                    range.start(),
                    range.end()
                ),
            );
            default
        }
    };
    let concurrency = count("concurrency", &r.concurrency, 1..=4096, 10);
    let max_queue = count("max_queue", &r.max_queue, 0..=1_000_000, 512);
    let target = count("target", &r.target, 1..=4096, concurrency);
    let queue_timeout = c.duration(
        "serve.queue_timeout",
        &r.queue_timeout,
        Duration::from_secs(60),
    );
    let idle_timeout = c.duration(
        "serve.idle_timeout",
        &r.idle_timeout,
        Duration::from_secs(300),
    );
    let hibernate_after = r
        .hibernate_after
        .as_ref()
        .map(|_| c.duration("serve.hibernate_after", &r.hibernate_after, Duration::ZERO));
    Some(Serve {
        health,
        ready_timeout,
        aliases,
        max_body,
        concurrency,
        max_queue,
        queue_timeout,
        target,
        idle_timeout,
        hibernate_after,
        loading_state: r.loading_state.unwrap_or(false),
    })
}
