//! The supervisor's side of a launch: the clone, the user namespace's maps, the
//! cgroups joined, the go, and the child's report read back.

use super::child::{ChildArgs, child_main};
use super::spec::*;
use super::step::{LaunchError, Step};
use crate::config::USERNS_BLOCK;
use crate::node::cgroups::CgroupError;
use std::ffi::c_void;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: two new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// How long a child may take from `clone()` to `exec`: mounts, credentials, the exec.
const LAUNCH_TIMEOUT_MS: i32 = 30_000;

/// Held by a launch while its child's ends of its pipes are open in this process.
static CLONING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A started worker: the process the supervisor waits for.
#[derive(Debug)]
pub struct Launched {
    /// In the supervisor's PID namespace.
    pub pid: i32,
}

/// Starts a worker. `join` runs in the supervisor with the child's pid before the child
/// goes on (put it in its cgroups there); its error cancels the launch.
pub fn launch(
    spec: &Spec,
    join: impl FnOnce(i32) -> Result<(), CgroupError>,
) -> Result<Launched, LaunchError> {
    let os = |step: &'static str| move |source: io::Error| LaunchError::Step { step, source };
    // From the pipes' creation until this process has closed the child's ends, no other
    // launch may clone: its child would hold our report pipe's write end open, and our
    // wait for exec would last as long as that child's own setup.
    let cloning = CLONING.lock().unwrap_or_else(|e| e.into_inner());
    let (go_read, go_write) = pipe().map_err(os("create a pipe"))?;
    let (report_read, report_write) = pipe().map_err(os("create a pipe"))?;
    let mut argv: Vec<*const libc::c_char> = spec.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = spec.envp.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let args = ChildArgs {
        spec,
        argv,
        envp,
        go: go_read.as_raw_fd(),
        report: report_write.as_raw_fd(),
        init: spec.isolation.pid,
        supervisor: std::process::id() as libc::pid_t,
    };
    let i = &spec.isolation;
    let mut flags = libc::SIGCHLD;
    for (on, flag) in [
        (i.pid, libc::CLONE_NEWPID),
        (i.mount, libc::CLONE_NEWNS),
        (i.ipc, libc::CLONE_NEWIPC),
        (i.uts, libc::CLONE_NEWUTS),
        (i.network, libc::CLONE_NEWNET),
        (spec.host_ids.is_some(), libc::CLONE_NEWUSER),
    ] {
        if on {
            flags |= flag;
        }
    }
    const STACK: usize = 256 << 10;
    let mut stack = vec![0u8; STACK];
    // SAFETY: the child gets a copy of this address space (no CLONE_VM) and runs
    // child_main on the top of `stack`, 16-byte aligned.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(STACK) as usize & !15;
        libc::clone(
            child_main,
            top as *mut c_void,
            flags,
            (&raw const args) as *mut c_void,
        )
    };
    if pid < 0 {
        return Err(os("clone")(io::Error::last_os_error()));
    }
    drop(go_read);
    drop(report_write);
    drop(cloning);
    let reap = || {
        // SAFETY: our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    };
    if let Some(first) = spec.host_ids {
        // The child waits for "go": its namespace has no ids until these maps exist.
        let map = format!("0 {first} {USERNS_BLOCK}\n");
        for file in ["uid_map", "gid_map"] {
            if let Err(e) = std::fs::write(format!("/proc/{pid}/{file}"), &map) {
                reap();
                return Err(LaunchError::Step {
                    step: "map the user namespace's ids",
                    source: e,
                });
            }
        }
    }
    if let Err(e) = join(pid) {
        reap();
        return Err(LaunchError::Join(e));
    }
    // SAFETY: one byte to our own pipe.
    if unsafe { libc::write(go_write.as_raw_fd(), [1u8].as_ptr().cast(), 1) } != 1 {
        reap();
        return Err(os("start the child")(io::Error::last_os_error()));
    }
    drop(go_write);
    // EOF on the report pipe: the worker exec'd. Eight bytes: a step failed. Nothing at
    // all: the child is stuck, and must not freeze the supervisor with it.
    let mut ready = libc::pollfd {
        fd: report_read.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one descriptor we own, retried on EINTR.
    while unsafe { libc::poll(&mut ready, 1, LAUNCH_TIMEOUT_MS) } < 0 {
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            reap();
            return Err(os("wait for the child")(io::Error::last_os_error()));
        }
    }
    if ready.revents == 0 {
        reap();
        return Err(LaunchError::Step {
            step: "exec",
            source: io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the child did not reach exec within {} s; killed",
                    LAUNCH_TIMEOUT_MS / 1000
                ),
            ),
        });
    }
    let mut msg = [0i32; 2];
    // SAFETY: reading into a local buffer.
    let n = unsafe { libc::read(report_read.as_raw_fd(), msg.as_mut_ptr().cast(), 8) };
    if n == 8 {
        reap();
        let step = Step::from_report(msg[0]).map_or("start", Step::describe);
        return Err(LaunchError::Step {
            step,
            source: io::Error::from_raw_os_error(msg[1]),
        });
    }
    Ok(Launched { pid })
}

/// How a waited-for process ended, as a shell would say it (128 + signal).
pub fn exit_code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}
