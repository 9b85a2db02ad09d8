//! The code that runs in the cloned child, between `clone()` and `exec`: raw system
//! calls on data the parent prepared, no allocation, no lock (see the module above).

use super::spec::*;
use super::step::Step;
use crate::config::caps::CapSet;
use std::ffi::{CString, c_void};
use std::io;
use std::os::fd::RawFd;

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

/// The child's view: raw pointers into the parent's (copied) memory.
pub(super) struct ChildArgs<'a> {
    pub(super) spec: &'a Spec,
    pub(super) argv: Vec<*const libc::c_char>,
    pub(super) envp: Vec<*const libc::c_char>,
    pub(super) go: RawFd,
    pub(super) report: RawFd,
    pub(super) init: bool,
    /// The supervisor's pid, to tell whether it died before the child armed its
    /// parent-death signal.
    pub(super) supervisor: libc::pid_t,
}

/// Writes (step, errno) to the report pipe and exits: the supervisor reads it.
///
/// # Safety
///
/// Only in the cloned child before exec: it ends the calling process with `_exit`.
unsafe fn fail(report: RawFd, step: Step) -> ! {
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
        if let Some(mask) = s.umask {
            libc::umask(mask);
        }
        let input = match s.stdin {
            Some(fd) => fd,
            None => libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY),
        };
        if input < 0
            || (input != 0 && libc::dup2(input, 0) < 0)
            || libc::dup2(s.stdout, 1) < 0
            || libc::dup2(s.stderr, 2) < 0
        {
            fail(a.report, Step::RedirectOutput);
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
                    fail(a.report, Step::DropCapabilities);
                }
            }
            if keep.0 != 0 && libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
                fail(a.report, Step::DropCapabilities);
            }
        }
        if let Some(gid) = s.gid {
            if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) != 0 {
                fail(a.report, Step::DropGroups);
            }
            if libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0 {
                fail(a.report, Step::SetGroup);
            }
        }
        if let Some(uid) = s.uid
            && libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
        {
            fail(a.report, Step::SetUser);
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
            fail(a.report, Step::ChangeDirectory);
        }
        libc::execve(s.program.as_ptr(), a.argv.as_ptr(), a.envp.as_ptr());
        fail(a.report, Step::Exec)
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
            fail(a.report, Step::DropCapabilities);
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
                fail(a.report, Step::DropCapabilities);
            }
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(a.report, Step::DropCapabilities);
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

pub(super) extern "C" fn child_main(arg: *mut c_void) -> i32 {
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
                fail(a.report, Step::SetUser);
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
                fail(a.report, Step::MakeRootPrivate);
            }
            if let Some(dev) = &s.dev
                && !show_dev(dev)
            {
                fail(a.report, Step::ShowOwnDevices);
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
                fail(a.report, Step::MountProc);
            }
            if s.isolation.network && !mount_own_sysfs() {
                fail(a.report, Step::MountOwnSys);
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
                    fail(a.report, Step::ShowOwnView);
                }
            }
            if let Some(hide) = &s.hide
                && libc::umount2(hide.as_ptr(), libc::MNT_DETACH) != 0
                && *libc::__errno_location() != libc::EINVAL
            {
                fail(a.report, Step::ShowOwnView);
            }
            for r in &s.read_only {
                if !make_read_only(r) {
                    fail(a.report, Step::MakeReadOnly);
                }
            }
            if let Some((dir, file)) = &s.ledger
                && !show_own_ledger(dir, file)
            {
                fail(a.report, Step::ShowOwnLedger);
            }
            for path in &s.cover {
                let mut st: libc::stat = std::mem::zeroed();
                let directory = libc::stat(path.as_ptr(), &mut st) == 0
                    && st.st_mode & libc::S_IFMT == libc::S_IFDIR;
                let covered = if directory {
                    libc::mount(
                        c"tmpfs".as_ptr(),
                        path.as_ptr(),
                        c"tmpfs".as_ptr(),
                        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        c"mode=0755,size=4k".as_ptr().cast(),
                    )
                } else {
                    libc::mount(
                        c"/dev/null".as_ptr(),
                        path.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    )
                };
                if covered != 0 && *libc::__errno_location() != libc::ENOENT {
                    fail(a.report, Step::Cover);
                }
            }
        }
        if s.isolation.uts
            && libc::sethostname(s.hostname.as_ptr(), s.hostname.as_bytes().len()) != 0
        {
            fail(a.report, Step::SetHostname);
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
            fail(a.report, Step::ForkWorker);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_joined_nul_terminated_or_refused_when_too_long() {
        let mut buf = [0xffu8; 512];
        assert!(join_path(&mut buf, b"/dev", b"nvidia0"));
        assert_eq!(&buf[..13], b"/dev/nvidia0\0");
        // "/dev" + '/' + name + NUL in 512 bytes: a name of 506 bytes fits, 507 does not.
        let long = [b'a'; 507];
        assert!(join_path(&mut buf, b"/dev", &long[..506]));
        assert_eq!(buf[511], 0);
        assert!(!join_path(&mut buf, b"/dev", &long));
    }
}
