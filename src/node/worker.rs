//! What a worker is started with: where it runs ([`Placement`]), its launch plan
//! ([`worker_spec`]), its environment and its arguments as C strings.

use crate::config::{ModelConfig, SupervisorConfig};
use crate::contract::{self, Contract};
use crate::gpu::GpuUuid;
use crate::launch::{self, Privileges, ReadOnly, Spec, SpecError};
use crate::ledger::LedgerFile;
use crate::view;
use std::ffi::CString;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

/// The environment of a worker: this process's, with the model's contract with the shim
/// (every `CUVISOR_*` variable cuvisor decides replaced by `contract`'s) and the shim
/// appended to any LD_PRELOAD already there. `extra` (a model's `env`) comes first.
pub fn worker_env(
    extra: &[(String, String)],
    contract: &Contract,
    shim: &Path,
) -> Vec<(String, String)> {
    let mut env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    for (k, v) in extra {
        env.insert(k.clone(), v.clone());
    }
    for k in contract::SET_BY_CUVISOR {
        env.remove(k);
    }
    for (k, v) in contract.to_env() {
        env.insert(k.to_owned(), v);
    }
    let shim = shim.display().to_string();
    let preload = match env.get("LD_PRELOAD") {
        Some(existing) if !existing.is_empty() => format!("{existing}:{shim}"),
        _ => shim,
    };
    env.insert("LD_PRELOAD".into(), preload);
    env.into_iter().collect()
}

/// Arguments or variables as C strings; one with a NUL byte is refused.
pub fn cstrings(
    items: impl IntoIterator<Item = String>,
) -> Result<Vec<CString>, crate::launch::SpecError> {
    items
        .into_iter()
        .map(|s| {
            CString::new(s)
                .map_err(|_| crate::launch::SpecError::Nul("an argument or variable".into()))
        })
        .collect()
}

/// Where an instance runs: its GPUs (its `CUDA_VISIBLE_DEVICES`, by UUID; None: every
/// GPU) and, for a served model, the loopback port it listens on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Placement<'a> {
    pub gpus: Option<&'a [GpuUuid]>,
    pub port: Option<u16>,
    /// Where the worker's own view of its memory and CPUs is served ([`crate::view`]).
    pub view: Option<&'a Path>,
    /// Its Python environment ([`crate::pyenv`]): first on its `PATH`, its `VIRTUAL_ENV`.
    pub python: Option<&'a Path>,
    /// The minor numbers of its GPUs' device nodes (`/dev/nvidiaN`), when it is placed:
    /// the only GPU nodes it is shown.
    pub gpu_minors: Option<&'a [u32]>,
}

/// How a worker of `cfg` is started (its program, arguments, environment, credentials,
/// namespaces, privileges), with its output going to `output`, where `at` says. Creates
/// nothing: it only looks for the program and reads this process's mount table.
pub fn worker_spec(
    cfg: &ModelConfig,
    supervisor: &SupervisorConfig,
    shim: &Path,
    output: RawFd,
    at: Placement,
) -> Result<Spec, SpecError> {
    let visible = at.gpus;
    // Thread pools sized to the model's CPUs (its own `env` may say otherwise).
    let threads = crate::cpus::threads(cfg.cpus.as_ref(), cfg.cpu_limit);
    let mut extra: Vec<(String, String)> = threads
        .into_iter()
        .flat_map(|n| {
            crate::cpus::THREAD_VARIABLES
                .iter()
                .map(move |v| (v.to_string(), n.to_string()))
        })
        .chain(cfg.env.iter().map(|(k, v)| (k.clone(), v.clone())))
        .collect();
    if let Some(port) = at.port {
        // The server's port: `PORT`, and `{port}` in its arguments.
        extra.push(("PORT".into(), port.to_string()));
    }
    if let Some(env) = at.python {
        let path = cfg
            .env
            .get("PATH")
            .cloned()
            .or_else(|| std::env::var("PATH").ok())
            .unwrap_or_else(|| launch::DEFAULT_PATH.into());
        extra.push((
            "PATH".into(),
            format!("{}:{path}", env.join("bin").display()),
        ));
        extra.push(("VIRTUAL_ENV".into(), env.display().to_string()));
    }
    if let Some(gpus) = visible {
        // CUDA numbers the model's GPUs 0.. in this order; NVML is filtered by the shim.
        let list: Vec<String> = gpus.iter().map(ToString::to_string).collect();
        extra.push(("CUDA_VISIBLE_DEVICES".into(), list.join(",")));
    }
    let contract = Contract {
        // None: its processes join the ledger's quota, which is the supervisor's (set
        // before the worker starts, and changed live), not the one it started with.
        quota: None,
        mode: cfg.mode,
        hibernate: true,
        ledger_dir: supervisor.ledger_dir.clone(),
        gpus: visible.map(<[GpuUuid]>::to_vec),
        ..Contract::new(&cfg.name)
    };
    let env = worker_env(&extra, &contract, shim);
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone());
    let program = launch::resolve_program(&cfg.command, path_var.as_deref())?;
    let mut argv = vec![cfg.command.clone()];
    argv.extend(cfg.args.iter().map(|a| match at.port {
        Some(port) => a.replace("{port}", &port.to_string()),
        None => a.clone(),
    }));
    let path = |p: &PathBuf| {
        CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| SpecError::Nul(format!("the path {}", p.display())))
    };
    // In its own mount namespace the worker is shown less of the host.
    let (read_only, cover, ledger) = if cfg.isolation.mount {
        // The model's bind_ro (checked by the configuration to exist) first.
        let mut read_only = cfg
            .bind_ro
            .iter()
            .map(|p| {
                Ok(ReadOnly {
                    path: path(p)?,
                    flags: 0,
                    bind: true,
                    optional: false,
                })
            })
            .collect::<Result<Vec<_>, SpecError>>()?;
        read_only.extend(launch::kernel_interfaces(
            &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
            cfg.isolation.network,
        ));
        // What every model runs: a worker that is root must not rewrite them.
        let exe = std::env::current_exe().ok();
        for p in [Some(shim.to_path_buf()), exe].into_iter().flatten() {
            read_only.push(ReadOnly {
                path: path(&p)?,
                flags: 0,
                bind: true,
                optional: false,
            });
        }
        // The Python environments: their files are hard links of uv's cache, shared by
        // every model that uses the same package.
        read_only.push(ReadOnly {
            path: path(&supervisor.envs.dir)?,
            flags: 0,
            bind: true,
            optional: true,
        });
        let ledger = (
            path(&supervisor.ledger_dir)?,
            path(&LedgerFile::path_for(&supervisor.ledger_dir, &cfg.name))?,
        );
        (read_only, vec![path(&supervisor.socket)?], Some(ledger))
    } else {
        (Vec::new(), Vec::new(), None)
    };
    // Its own /proc/meminfo and CPU files, over the host's (in its mount namespace).
    let binds = match at.view.filter(|_| cfg.isolation.mount) {
        Some(dir) => view::files_for(cfg.memory_limit, cfg.cpus.as_ref(), cfg.cpu_limit)
            .map(|(file, target)| {
                Ok((
                    path(&dir.join(file))?,
                    CString::new(target).expect("no NUL in a constant"),
                ))
            })
            .collect::<Result<Vec<_>, SpecError>>()?,
        None => Vec::new(),
    };
    let dev = match at.gpu_minors.filter(|_| cfg.isolation.mount) {
        Some(minors) => Some(
            launch::dev_entries(Path::new("/dev"), minors)
                .map_err(|e| SpecError::Dev(e.to_string()))?,
        ),
        None => None,
    };
    // The view filesystem whole stays the supervisor's: the worker keeps its binds only.
    let hide = match (at.view, binds.is_empty()) {
        (Some(dir), false) => dir.parent().map(|p| path(&p.to_path_buf())).transpose()?,
        _ => None,
    };
    Ok(Spec {
        program,
        dev,
        hide,
        argv: cstrings(argv)?,
        envp: cstrings(env.iter().map(|(k, v)| format!("{k}={v}")))?,
        cwd: cfg.cwd.as_ref().map(path).transpose()?,
        // In its own user namespace the worker becomes root there (host ids `host_ids`).
        uid: cfg.uid.or(cfg.host_ids.map(|_| 0)),
        gid: cfg.gid.or(cfg.host_ids.map(|_| 0)),
        isolation: cfg.isolation,
        hostname: cstrings([cfg.name.clone()])?.remove(0),
        privileges: Privileges::Keep(cfg.capabilities),
        read_only,
        cover,
        binds,
        host_ids: cfg.host_ids,
        ledger,
        umask: None,
        stdin: None,
        stdout: output,
        stderr: output,
    })
}
