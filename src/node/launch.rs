//! Starting one worker: `clone()` into new namespaces, join its cgroups, exec.
//!
//! With a PID namespace the cloned child is a tiny init (PID 1 there): it waits until the
//! supervisor has put it in its cgroups, makes `/` private, mounts a fresh `/proc` and the
//! read-only binds, then forks the worker (PID 2), forwards signals to it, reaps every
//! orphan of the namespace, and exits with the worker's status (the kernel then kills
//! whatever is left in the namespace). Without a PID namespace the child is the worker.
//!
//! After `clone()` the child runs only raw system calls on data prepared beforehand. The
//! supervisor has threads, and the child is a copy of it with one thread: a lock another
//! thread held at the instant of the clone stays held forever there. So no allocation, and
//! none of glibc's wrappers that take locks or believe the process still has its threads:
//! `fork()` (it takes malloc's locks for its atfork handlers) and `setuid()`/`setgid()`/
//! `setgroups()` (they signal every thread of the process) are made as raw system calls.

use crate::config::caps::CapSet;
use crate::config::{Isolation, USERNS_BLOCK};
use std::ffi::{CString, c_void};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Everything the child needs, prepared before `clone()`.
pub struct Spec {
    pub program: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub cwd: Option<CString>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub isolation: Isolation,
    pub hostname: CString,
    /// What the worker keeps of the supervisor's privileges.
    pub privileges: Privileges,
    /// With a mount namespace: what becomes read-only in it (the model's `bind_ro`, the
    /// kernel's interfaces, the shim, the supervisor's binary).
    pub read_only: Vec<ReadOnly>,
    /// With a mount namespace: files covered with `/dev/null` in it (the supervisor's
    /// control socket).
    pub cover: Vec<CString>,
    /// With a mount namespace: the ledger directory, and the model's ledger in it, the one
    /// file the worker sees there.
    pub ledger: Option<(CString, CString)>,
    /// With `isolation.user`: the first of the [`USERNS_BLOCK`] host ids that ids 0.. in
    /// the worker's user namespace map to (uids and gids alike).
    pub host_ids: Option<u32>,
    /// With a mount namespace: files bound over others (source, target), each read-only:
    /// the model's view of its memory and CPUs.
    pub binds: Vec<(CString, CString)>,
    /// With a mount namespace: the entries of `/dev` the worker is shown (a new `/dev`
    /// with these of the host's bound into it); None: the host's `/dev` whole.
    pub dev: Option<Vec<DevEntry>>,
    /// With a mount namespace: a mount detached once the binds are made (the supervisor's
    /// view filesystem: the worker keeps its own files, and sees no other worker's).
    pub hide: Option<CString>,
    /// The worker's stdin (None: /dev/null, as for a supervised worker), stdout and
    /// stderr.
    pub stdin: Option<RawFd>,
    pub stdout: RawFd,
    pub stderr: RawFd,
}

/// What a worker keeps of the supervisor's (root's) privileges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privileges {
    /// Everything (`cuvisor exec`: the operator's own program, as if run directly).
    Inherit,
    /// These capabilities only, in every set (bounding, permitted, effective, inheritable,
    /// ambient), and `no_new_privs`: exec can never give more back.
    Keep(CapSet),
}

/// A path made read-only in the worker's mount namespace, with every mount under it: a
/// mount point, or (`bind`) a path bound onto itself first. `flags` are the mount's own
/// (kept by the remount of kernels without mount_setattr). A path that is `optional`
/// and missing is skipped.
#[derive(Debug, Clone)]
pub struct ReadOnly {
    pub path: CString,
    pub flags: libc::c_ulong,
    pub bind: bool,
    pub optional: bool,
}

/// The kernel interfaces a worker could change the host through as uid 0 without any
/// capability (their files are root's, mode 0644): every mount under `/sys` (cgroupfs: a
/// worker would move itself out of its cgroups), `/proc/sys` (sysctls, and mounts under
/// it such as `binfmt_misc`), `/proc/sysrq-trigger`, `/proc/irq` and `/proc/bus`. Read
/// from `mountinfo` (this process's). Each is made read-only with everything mounted
/// under it. With `own_sysfs` (a worker in its own network namespace gets a sysfs of its
/// own, read-only, with the cgroup tree bound into it) only the mounts under
/// `/sys/fs/cgroup` remain of `/sys`'s.
pub fn kernel_interfaces(mountinfo: &str, own_sysfs: bool) -> Vec<ReadOnly> {
    let mut out: Vec<ReadOnly> = mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let (point, options) = (*fields.get(4)?, *fields.get(5)?);
            if point != "/sys" && !point.starts_with("/sys/") {
                return None;
            }
            if own_sysfs && point != "/sys/fs/cgroup" && !point.starts_with("/sys/fs/cgroup/") {
                return None;
            }
            let mut flags = 0;
            for o in options.split(',') {
                flags |= match o {
                    "nosuid" => libc::MS_NOSUID,
                    "nodev" => libc::MS_NODEV,
                    "noexec" => libc::MS_NOEXEC,
                    "noatime" => libc::MS_NOATIME,
                    "nodiratime" => libc::MS_NODIRATIME,
                    "relatime" => libc::MS_RELATIME,
                    "strictatime" => libc::MS_STRICTATIME,
                    _ => 0,
                };
            }
            // mountinfo escapes spaces and the like as \ooo: such paths are left alone.
            (!point.contains('\\'))
                .then(|| CString::new(point).ok())
                .flatten()
                .map(|path| ReadOnly {
                    path,
                    flags,
                    bind: false,
                    optional: false,
                })
        })
        .collect();
    for path in [
        c"/proc/sys",
        c"/proc/sysrq-trigger",
        c"/proc/irq",
        c"/proc/bus",
    ] {
        out.push(ReadOnly {
            path: path.to_owned(),
            flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            bind: true,
            optional: true,
        });
    }
    out
}

/// An entry of the host's `/dev` to show a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevEntry {
    pub name: CString,
    pub kind: DevKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevKind {
    /// A directory (bound with every mount under it: `/dev/pts`, `/dev/shm`, …).
    Dir,
    /// A symbolic link, made again with this target.
    Link(CString),
    /// A device node or any other file, bound.
    Node,
}

/// The entries of `/dev` (as listed in `dir`) a worker is shown: all but the GPU nodes
/// `nvidiaN` whose N is not in `gpus` (NVIDIA's control nodes, `nvidiactl`,
/// `nvidia-uvm`, …, stay), and but `pts` and `ptmx`: the worker gets a pseudo-terminal
/// filesystem of its own (a `ptmx` bound alone could not find its `pts`).
pub fn dev_entries(dir: &std::path::Path, gpus: &[u32]) -> io::Result<Vec<DevEntry>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(text) = name.to_str() else { continue };
        if text == "pts" || text == "ptmx" {
            continue;
        }
        if let Some(n) = text.strip_prefix("nvidia")
            && !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
            && !n.parse::<u32>().is_ok_and(|n| gpus.contains(&n))
        {
            continue; // another GPU's node
        }
        let Ok(name) = CString::new(text) else {
            continue;
        };
        let kind = entry.file_type()?;
        let kind = if kind.is_symlink() {
            let target = std::fs::read_link(entry.path())?;
            match CString::new(target.as_os_str().as_encoded_bytes()) {
                Ok(t) => DevKind::Link(t),
                Err(_) => continue,
            }
        } else if kind.is_dir() {
            DevKind::Dir
        } else {
            DevKind::Node
        };
        out.push(DevEntry { name, kind });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `a` + `/` + `b`, NUL-terminated, in `buf` (no allocation: in the child). False if it
/// does not fit.
fn join_path(buf: &mut [u8; 512], a: &[u8], b: &[u8]) -> bool {
    if a.len() + 1 + b.len() + 1 > buf.len() {
        return false;
    }
    buf[..a.len()].copy_from_slice(a);
    buf[a.len()] = b'/';
    buf[a.len() + 1..a.len() + 1 + b.len()].copy_from_slice(b);
    buf[a.len() + 1 + b.len()] = 0;
    true
}

/// A new `/dev` (a tmpfs where no device node can be made) holding `entries` of the
/// host's, bound from it, and a pseudo-terminal filesystem of its own (`pts`, and `ptmx`
/// its multiplexer).
///
/// # Safety
///
/// Only in the child, in its own mount namespace: the supervisor's mounts must not change.
unsafe fn show_dev(entries: &[DevEntry]) -> bool {
    // SAFETY: system calls on valid C strings, our own descriptor, and stack buffers
    // made NUL-terminated by `join_path`.
    unsafe {
        let host = libc::open(
            c"/dev".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if host < 0 {
            return false;
        }
        if libc::mount(
            c"tmpfs".as_ptr(),
            c"/dev".as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV,
            c"mode=0755,size=64k".as_ptr().cast(),
        ) != 0
        {
            return false;
        }
        if libc::mkdir(c"/dev/pts".as_ptr(), 0o755) != 0
            || libc::mount(
                c"devpts".as_ptr(),
                c"/dev/pts".as_ptr(),
                c"devpts".as_ptr(),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                c"newinstance,ptmxmode=0666,mode=0620".as_ptr().cast(),
            ) != 0
            || libc::symlink(c"pts/ptmx".as_ptr(), c"/dev/ptmx".as_ptr()) != 0
        {
            return false;
        }
        let source_dir = fd_path(host);
        let source_len = source_dir.iter().position(|&b| b == 0).unwrap_or(0);
        let (mut source, mut target) = ([0u8; 512], [0u8; 512]);
        for e in entries {
            let name = e.name.as_bytes();
            if !join_path(&mut source, &source_dir[..source_len], name)
                || !join_path(&mut target, b"/dev", name)
            {
                return false;
            }
            let t = target.as_ptr().cast();
            let made = match &e.kind {
                DevKind::Link(to) => libc::symlink(to.as_ptr(), t) == 0,
                DevKind::Dir => libc::mkdir(t, 0o755) == 0,
                DevKind::Node => {
                    let fd = libc::open(t, libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o600);
                    fd >= 0 && libc::close(fd) == 0
                }
            };
            if !made {
                return false;
            }
            if let DevKind::Link(_) = e.kind {
                continue;
            }
            if libc::mount(
                source.as_ptr().cast(),
                t,
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ) != 0
            {
                return false;
            }
        }
        libc::close(host);
        true
    }
}

/// What went wrong in the child, and at which step.
#[derive(Debug)]
pub struct LaunchError {
    pub step: &'static str,
    pub source: io::Error,
}

impl std::fmt::Display for LaunchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.source)
    }
}

impl std::error::Error for LaunchError {}

const STEPS: &[&str] = &[
    "wait for the supervisor",
    "make / private",
    "mount /proc",
    "make a path read-only",
    "set the hostname",
    "fork the worker",
    "drop supplementary groups",
    "set the group",
    "set the user",
    "change directory",
    "redirect output",
    "exec",
    "show the worker its own ledger only",
    "drop capabilities",
    "cover the control socket",
    "mount its own /sys",
    "show the worker its own memory and CPUs",
    "show the worker its own GPUs' device nodes",
];

/// Why a launch [`Spec`] cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("cannot list /dev for the worker's GPUs: {0}")]
    Dev(String),
    #[error("{}: not an executable file", .0.display())]
    NotExecutable(std::path::PathBuf),
    #[error("{0}: not found in PATH")]
    NotFound(String),
    /// A NUL byte in what it names (a C string cannot hold one).
    #[error("a NUL byte in {0}")]
    Nul(String),
}

/// Finds `command` the way a shell would: as a path if it has a slash, else in PATH.
pub fn resolve_program(command: &str, path_var: Option<&str>) -> Result<CString, SpecError> {
    let found = if command.contains('/') {
        Some(std::path::PathBuf::from(command))
    } else {
        path_var
            .unwrap_or("/usr/local/bin:/usr/bin:/bin")
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| std::path::Path::new(d).join(command))
            .find(|p| is_executable(p))
    };
    match found {
        Some(p) if is_executable(&p) => CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| SpecError::Nul("the command".into())),
        Some(p) => Err(SpecError::NotExecutable(p)),
        None => Err(SpecError::NotFound(command.to_owned())),
    }
}

fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: two new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The child's view: raw pointers into the parent's (copied) memory.
struct ChildArgs<'a> {
    spec: &'a Spec,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    go: RawFd,
    report: RawFd,
    init: bool,
    /// The supervisor's pid, to tell whether it died before the child armed its
    /// parent-death signal.
    supervisor: libc::pid_t,
}

/// Writes (step, errno) to the report pipe and exits: the supervisor reads it.
///
/// # Safety
///
/// Only in the cloned child before exec: it ends the calling process with `_exit`.
unsafe fn fail(report: RawFd, step: usize) -> ! {
    let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let msg = [step as i32, errno];
    // SAFETY: writing 8 bytes from the stack.
    unsafe {
        libc::write(report, msg.as_ptr().cast(), 8);
        libc::_exit(127)
    }
}

/// Becomes the worker: credentials, directory, output, exec. Never returns.
///
/// # Safety
///
/// Only in the cloned child, with `a` as `launch` built it: it replaces or ends the
/// calling process.
unsafe fn exec_worker(a: &ChildArgs) -> ! {
    let s = a.spec;
    // SAFETY: in the child before exec, as `fail` and `drop_capabilities` require: system
    // calls on `a`'s C strings and NULL-terminated argv and envp; a zeroed sigset_t is valid.
    unsafe {
        // A fresh signal state: nothing blocked, SIGPIPE at its default (Rust ignores it).
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let input = match s.stdin {
            Some(fd) => fd,
            None => libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY),
        };
        if input < 0
            || (input != 0 && libc::dup2(input, 0) < 0)
            || libc::dup2(s.stdout, 1) < 0
            || libc::dup2(s.stderr, 2) < 0
        {
            fail(a.report, 10);
        }
        // Nothing the supervisor had open goes past exec (the report pipe stays until then).
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC);
        if let Privileges::Keep(keep) = s.privileges {
            // The bounding set first (it takes CAP_SETPCAP, which a change of user drops),
            // then keep the permitted set across the change of user if anything is kept.
            for cap in 0..64 {
                if !keep.contains(cap)
                    && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
                    && *libc::__errno_location() != libc::EINVAL
                {
                    fail(a.report, 13);
                }
            }
            if keep.0 != 0 && libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
                fail(a.report, 13);
            }
        }
        if let Some(gid) = s.gid {
            if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) != 0 {
                fail(a.report, 6);
            }
            if libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0 {
                fail(a.report, 7);
            }
        }
        if let Some(uid) = s.uid
            && libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
        {
            fail(a.report, 8);
        }
        if let Privileges::Keep(keep) = s.privileges {
            drop_capabilities(a, keep);
        }
        // A change of credentials clears the parent-death signal. Without a PID namespace
        // (no init whose death ends the namespace) the worker must arm it again, and check
        // that the supervisor did not die before that.
        if !a.init && (s.uid.is_some() || s.gid.is_some()) {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != a.supervisor {
                libc::_exit(1);
            }
        }
        if let Some(cwd) = &s.cwd
            && libc::chdir(cwd.as_ptr()) != 0
        {
            fail(a.report, 9);
        }
        libc::execve(s.program.as_ptr(), a.argv.as_ptr(), a.envp.as_ptr());
        fail(a.report, 11)
    }
}

/// Leaves the calling process `keep` in every capability set, and `no_new_privs`.
///
/// # Safety
///
/// Only in the cloned child before exec: it ends the process (through `fail`) on error.
unsafe fn drop_capabilities(a: &ChildArgs, keep: CapSet) {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let (lo, hi) = (keep.0 as u32, (keep.0 >> 32) as u32);
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [
        Data {
            effective: lo,
            permitted: lo,
            inheritable: lo,
        },
        Data {
            effective: hi,
            permitted: hi,
            inheritable: hi,
        },
    ];
    // SAFETY: capset with a version-3 header and its two data words; prctl calls on
    // ourselves.
    unsafe {
        if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) != 0
            || libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
        {
            fail(a.report, 13);
        }
        // Ambient: a kept capability survives exec for a worker that is not root.
        for cap in 0..64u32 {
            if keep.contains(cap)
                && libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    cap as libc::c_ulong,
                    0,
                    0,
                ) != 0
            {
                fail(a.report, 13);
            }
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(a.report, 13);
        }
    }
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// Makes one path read-only in this mount namespace, with every mount under it
/// (mount_setattr; on kernels before 5.12, the mount itself). An optional path that this
/// kernel does not have (no `/proc/sysrq-trigger` without magic SysRq) needs nothing.
///
/// # Safety
///
/// Only in the child, in its own mount namespace: the supervisor's mounts must not change.
unsafe fn make_read_only(r: &ReadOnly) -> bool {
    // SAFETY: mount calls with valid C strings.
    unsafe {
        if r.bind
            && libc::mount(
                r.path.as_ptr(),
                r.path.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ) != 0
        {
            return r.optional && *libc::__errno_location() == libc::ENOENT;
        }
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        if libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            r.path.as_ptr(),
            AT_RECURSIVE,
            &attr,
            std::mem::size_of::<MountAttr>(),
        ) == 0
        {
            return true;
        }
        if *libc::__errno_location() != libc::ENOSYS {
            return false;
        }
        libc::mount(
            std::ptr::null(),
            r.path.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | r.flags,
            std::ptr::null(),
        ) == 0
    }
}

/// `/proc/self/fd/N`, NUL-terminated, formatted without allocating (in the child).
fn fd_path(fd: i32) -> [u8; 32] {
    let mut path = [0u8; 32];
    path[..14].copy_from_slice(b"/proc/self/fd/");
    let mut digits = [0u8; 10];
    let (mut n, mut len) = (fd as u32, 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for k in 0..len {
        path[14 + k] = digits[len - 1 - k];
    }
    path
}

/// Mounts a sysfs of the worker's own on `/sys`, read-only: in its own network namespace,
/// `/sys/class/net` then lists its own devices, not the host's. The cgroup tree (with
/// its mounts) is bound into it again, for the programs that read their limits there.
///
/// # Safety
///
/// Only in the child, in its own mount namespace: the supervisor's mounts must not change.
unsafe fn mount_own_sysfs() -> bool {
    // SAFETY: system calls on valid C strings and our own descriptor.
    unsafe {
        let cgroups = libc::open(
            c"/sys/fs/cgroup".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if libc::mount(
            c"sysfs".as_ptr(),
            c"/sys".as_ptr(),
            c"sysfs".as_ptr(),
            flags,
            std::ptr::null(),
        ) != 0
        {
            return false;
        }
        if cgroups < 0 {
            return true; // the host has none to show
        }
        let source = fd_path(cgroups);
        let ok = libc::mount(
            source.as_ptr().cast(),
            c"/sys/fs/cgroup".as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ) == 0;
        libc::close(cgroups);
        ok
    }
}

/// Covers the ledger directory with an empty read-only tmpfs that shows one file: the
/// model's own ledger, bound from the real directory.
///
/// # Safety
///
/// Only in the child, in its own mount namespace: the supervisor's mounts must not change.
unsafe fn show_own_ledger(dir: &CString, file: &CString) -> bool {
    // SAFETY: system calls on valid C strings and our own descriptors; the path of the
    // descriptor is formatted into a stack buffer.
    unsafe {
        let own = libc::open(
            file.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        );
        if own < 0 {
            return false;
        }
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if libc::mount(
            c"tmpfs".as_ptr(),
            dir.as_ptr(),
            c"tmpfs".as_ptr(),
            flags,
            c"mode=0755,size=64k".as_ptr().cast(),
        ) != 0
        {
            return false;
        }
        let target = libc::open(
            file.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600,
        );
        if target < 0 {
            return false;
        }
        libc::close(target);
        let source = fd_path(own);
        let ok = libc::mount(
            source.as_ptr().cast(),
            file.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ) == 0
            && libc::mount(
                std::ptr::null(),
                dir.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | flags,
                std::ptr::null(),
            ) == 0;
        libc::close(own);
        ok
    }
}

/// close_range(2) flag: mark close-on-exec instead of closing.
const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;

const FORWARDED: [i32; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

extern "C" fn child_main(arg: *mut c_void) -> i32 {
    // SAFETY: `arg` is the ChildArgs the parent prepared; only system calls from here on.
    unsafe {
        let a = &*(arg as *const ChildArgs);
        let s = a.spec;
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // Wait until the supervisor has put us in our cgroups (EOF: it is gone).
        let mut b = 0u8;
        if libc::read(a.go, (&raw mut b).cast(), 1) != 1 {
            libc::_exit(1);
        }
        libc::close(a.go);
        // In a user namespace, become its root now (the host ids the supervisor mapped):
        // what the init makes from here on (the ledger's tmpfs) belongs to the namespace.
        if s.host_ids.is_some() {
            if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) != 0
                || libc::syscall(libc::SYS_setresgid, 0, 0, 0) != 0
                || libc::syscall(libc::SYS_setresuid, 0, 0, 0) != 0
            {
                fail(a.report, 8);
            }
            // The change of credentials cleared the parent-death signal: arm it again. A
            // supervisor that died before that closed its end of the report pipe (it
            // holds it until the worker's exec): then stop here.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let mut gone = libc::pollfd {
                fd: a.report,
                events: 0,
                revents: 0,
            };
            if libc::poll(&mut gone, 1, 0) != 0 && gone.revents & libc::POLLERR != 0 {
                libc::_exit(1);
            }
        }
        if s.isolation.mount {
            if libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                fail(a.report, 1);
            }
            if let Some(dev) = &s.dev
                && !show_dev(dev)
            {
                fail(a.report, 17);
            }
            if s.isolation.pid
                && libc::mount(
                    c"proc".as_ptr(),
                    c"/proc".as_ptr(),
                    c"proc".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                ) != 0
            {
                fail(a.report, 2);
            }
            if s.isolation.network && !mount_own_sysfs() {
                fail(a.report, 15);
            }
            for (source, target) in &s.binds {
                if libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                {
                    fail(a.report, 16);
                }
            }
            if let Some(hide) = &s.hide
                && libc::umount2(hide.as_ptr(), libc::MNT_DETACH) != 0
                && *libc::__errno_location() != libc::EINVAL
            {
                fail(a.report, 16);
            }
            for r in &s.read_only {
                if !make_read_only(r) {
                    fail(a.report, 3);
                }
            }
            if let Some((dir, file)) = &s.ledger
                && !show_own_ledger(dir, file)
            {
                fail(a.report, 12);
            }
            for path in &s.cover {
                if libc::mount(
                    c"/dev/null".as_ptr(),
                    path.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                    && *libc::__errno_location() != libc::ENOENT
                {
                    fail(a.report, 14);
                }
            }
        }
        if s.isolation.uts
            && libc::sethostname(s.hostname.as_ptr(), s.hostname.as_bytes().len()) != 0
        {
            fail(a.report, 4);
        }
        if !a.init {
            exec_worker(a);
        }
        // PID 1 of the namespace: block what we forward (and SIGCHLD), fork the worker.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        for sig in FORWARDED {
            libc::sigaddset(&mut set, sig);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        // fork(2) as a raw clone: glibc's fork() would wait for malloc locks that threads
        // of the supervisor may have held when we were cloned.
        let worker = libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        ) as libc::pid_t;
        if worker < 0 {
            fail(a.report, 5);
        }
        if worker == 0 {
            exec_worker(a);
        }
        // The init keeps nothing of the supervisor's: not the report pipe (the worker's copy
        // reports; ours would hide its EOF), not client connections, not other workers'
        // pipes, not the supervisor's stdio.
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            if null > 2 {
                libc::close(null);
            }
        }
        loop {
            let sig = libc::sigwaitinfo(&set, std::ptr::null_mut());
            if sig == libc::SIGCHLD {
                loop {
                    let mut status = 0;
                    let pid = libc::waitpid(-1, &mut status, libc::WNOHANG);
                    if pid <= 0 {
                        break;
                    }
                    if pid == worker {
                        let code = if libc::WIFEXITED(status) {
                            libc::WEXITSTATUS(status)
                        } else {
                            128 + libc::WTERMSIG(status)
                        };
                        libc::_exit(code);
                    }
                }
            } else if sig > 0 {
                libc::kill(worker, sig);
            }
        }
    }
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
    join: impl FnOnce(i32) -> Result<(), String>,
) -> Result<Launched, LaunchError> {
    let os = |step: &'static str| move |source: io::Error| LaunchError { step, source };
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
                return Err(LaunchError {
                    step: "map the user namespace's ids",
                    source: e,
                });
            }
        }
    }
    if let Err(e) = join(pid) {
        reap();
        return Err(LaunchError {
            step: "join the cgroups",
            source: io::Error::other(e),
        });
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
        return Err(LaunchError {
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
        let step = STEPS.get(msg[0] as usize).copied().unwrap_or("start");
        return Err(LaunchError {
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
