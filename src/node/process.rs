//! Process helpers of the node: the supervisor's lock, child subreaping, signals, the
//! host's memory, free ports.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// A free loopback port for an instance (the kernel's choice, released for the worker to
/// bind).
pub fn free_port() -> std::io::Result<u16> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    probe.local_addr().map(|a| a.port())
}

/// Why the supervisor's lock cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path}: {source}", path = path.display())]
    RunDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another supervisor (pid {pid}) runs with cgroup_name = \"{cgroup_name}\" (it holds {}); stop it, or give this one another cgroup_name",
        path.display()
    )]
    Busy {
        pid: String,
        cgroup_name: String,
        path: PathBuf,
    },
}

/// The one supervisor of a cgroup parent: an exclusive `flock` on
/// `RUN_DIR/<cgroup_name>.lock`, which holds its pid. The kernel releases it when the
/// supervisor dies, however it dies.
pub struct SupervisorLock {
    _file: std::fs::File,
}

impl SupervisorLock {
    pub fn acquire(run_dir: &Path, cgroup_name: &str) -> Result<SupervisorLock, LockError> {
        use std::io::{Read, Seek};
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(run_dir)
            .map_err(|source| LockError::RunDir {
                path: run_dir.to_owned(),
                source,
            })?;
        let path = run_dir.join(format!("{cgroup_name}.lock"));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| LockError::RunDir {
                path: path.clone(),
                source,
            })?;
        // SAFETY: flock on our own descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(LockError::Busy {
                pid: pid.trim().to_owned(),
                cgroup_name: cgroup_name.to_owned(),
                path,
            });
        }
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        written.map_err(|source| LockError::RunDir { path, source })?;
        Ok(SupervisorLock { _file: file })
    }
}

/// As a child subreaper, the orphans that come to this process: reaped, except those
/// `keep` says may be workers (reaped by pid by the supervisor).
pub fn reap_orphans(keep: impl Fn(i32) -> bool) {
    loop {
        // SAFETY: siginfo_t is plain data; all zeros is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid with a valid buffer; WNOWAIT leaves the child waitable.
        let r = unsafe {
            libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: si_pid is valid for the child-state changes waitid reports.
        let pid = unsafe { info.si_pid() };
        if r != 0 || pid == 0 || keep(pid) {
            return;
        }
        // SAFETY: reaping the orphan waitid just reported.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    }
}

pub fn is_subreaper() -> bool {
    let mut on: libc::c_int = 0;
    // SAFETY: prctl writes one int to a local.
    unsafe {
        libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut on as *mut libc::c_int) == 0 && on != 0
    }
}

/// Makes this process a child subreaper: orphans of workers (their children that
/// outlive them, outside a PID namespace) come to it, and the supervisor reaps them.
pub fn become_subreaper() {
    // SAFETY: prctl on ourselves.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
}

/// Blocks the signals the binary handles (SIGCHLD, SIGTERM, SIGINT, SIGHUP) in this
/// thread and the threads it starts later: call it before any other thread exists.
pub fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; all zeros is a valid value (and emptied below).
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigemptyset and sigaddset on a local set of valid signals; pthread_sigmask
    // only changes this thread's mask (threads spawned later inherit it).
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

/// The host's memory (`MemTotal`), in bytes.
pub fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// Raises this process's soft limit on open descriptors to its hard limit (a service
/// manager's default soft limit, 1,024, is a few hundred clients): the new soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit and setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
        r.rlim_cur
    }
}

/// This process's soft limit on open descriptors.
pub fn nofile() -> u64 {
    // SAFETY: getrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        r.rlim_cur
    }
}

/// A pipe (read end, write end), both close-on-exec: a child gets an end only through
/// its launch spec's `dup2`.
pub fn pipe() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: two new descriptors that nothing else owns.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}
