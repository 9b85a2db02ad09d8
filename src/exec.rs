//! `cuvisor exec`: one program under the shim, with its model's quota and optional host
//! limits, without a configuration file. The exit status is passed through.

use crate::cgroups::{Hierarchy, Limits};
use crate::config::Isolation;
use crate::contract::{Contract, Mode};
use crate::launch::{self, Spec};
use crate::ledger::CreateOptions;
/// Moved to [`crate::node::worker`]; these paths stay for one release.
pub use crate::node::worker::{cstrings, worker_env};
use crate::size::QuotaSpec;
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// Moved to [`crate::config::EXEC_CGROUP_NAME`]; this path stays for one release.
pub use crate::config::EXEC_CGROUP_NAME;

pub struct ExecOptions {
    pub model: String,
    pub quota: Option<QuotaSpec>,
    pub mode: Mode,
    pub ledger_dir: PathBuf,
    pub shim: PathBuf,
    pub limits: Limits,
    /// The program's processes carry out `cuvisor ledger hibernate` and `wake`.
    pub hibernate: bool,
    pub command: Vec<String>,
}

/// Where the shim is, unless told: next to this binary, or in `../lib` beside it.
pub fn default_shim() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [
        dir.join("libcuvisor_preload.so"),
        dir.join("../lib/libcuvisor_preload.so"),
        dir.join("../lib/cuvisor/libcuvisor_preload.so"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// Why `cuvisor exec` cannot run its program.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error(transparent)]
    Spec(#[from] crate::launch::SpecError),
    #[error("cannot apply the limits asked for: {0}")]
    Limits(#[from] crate::cgroups::Unsupported),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
    #[error("cannot start {command}: {source}")]
    Launch {
        command: String,
        source: crate::launch::LaunchError,
    },
}

/// Runs the program to its end; returns its exit status (128 + signal if killed).
pub fn exec(o: ExecOptions) -> Result<i32, ExecError> {
    // The model's ledger first: a quota that disagrees with it stops us here.
    crate::ledger::ensure(&o.ledger_dir, &o.model, o.quota, CreateOptions::default())?;
    let env = worker_env(
        &[],
        &Contract {
            quota: o.quota,
            mode: o.mode,
            ledger_dir: o.ledger_dir.clone(),
            hibernate: o.hibernate,
            ..Contract::new(&o.model)
        },
        &o.shim,
    );
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone());
    let program = launch::resolve_program(&o.command[0], path_var.as_deref())?;
    let hierarchy = if o.limits.any() {
        Hierarchy::detect(Path::new("/sys/fs/cgroup"), EXEC_CGROUP_NAME)
    } else {
        Hierarchy::None {
            why: "no host limits asked for".into(),
        }
    };
    hierarchy.supports(&o.limits)?;
    let spec = Spec {
        program,
        argv: cstrings(o.command.iter().cloned())?,
        envp: cstrings(env.iter().map(|(k, v)| format!("{k}={v}")))?,
        cwd: None,
        uid: None,
        gid: None,
        isolation: Isolation {
            pid: false,
            mount: false,
            ipc: false,
            uts: false,
            network: false,
            user: false,
        },
        hostname: CString::new(o.model.clone()).expect("model names have no NUL"),
        privileges: launch::Privileges::Inherit,
        read_only: Vec::new(),
        cover: Vec::new(),
        binds: Vec::new(),
        dev: None,
        hide: None,
        ledger: None,
        host_ids: None,
        umask: None,
        stdin: Some(0), // the program is ours to talk to, as if run directly
        stdout: 1,
        stderr: 2,
    };
    let cgroup = hierarchy
        .create(
            &format!("exec-{}-{}", o.model, std::process::id()),
            &o.limits,
        )
        .inspect_err(|_| hierarchy.remove_base())?;
    // Signals for the program are forwarded to it while we wait.
    // SAFETY: sigset_t is plain data; all zeros is a valid value (and emptied below).
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigemptyset and sigaddset on a local set of valid signals; pthread_sigmask
    // only changes this thread's mask.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGCHLD,
        ] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let result = launch::launch(&spec, |pid| cgroup.add(pid as u32));
    let child = match result {
        Ok(c) => c,
        Err(e) => {
            let _ = cgroup.remove();
            hierarchy.remove_base();
            return Err(ExecError::Launch {
                command: o.command[0].clone(),
                source: e,
            });
        }
    };
    let status = loop {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(child.pid, &mut status, libc::WNOHANG) };
        if r == child.pid {
            break status;
        }
        let timeout = libc::timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        // SAFETY: sigtimedwait with a valid set.
        let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
        if sig > 0 && sig != libc::SIGCHLD {
            // SAFETY: our own child, not reaped yet (so its pid cannot be reused).
            unsafe { libc::kill(child.pid, sig) };
        }
    };
    let _ = crate::ledger::reclaim_isolated(&o.ledger_dir, &o.model);
    let _ = cgroup.remove();
    hierarchy.remove_base();
    Ok(launch::exit_code(status))
}
