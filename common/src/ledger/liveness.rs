//! Liveness and waiting, beneath the mapping: byte-range locks on the file (a slot's
//! liveness, GPU registration), the monotonic clock, and what procfs says of a process.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

/// Liveness locks sit far beyond the end of the file, one byte per slot.
const LOCK_BASE: i64 = 1 << 40;
/// The byte whose lock serializes GPU registration.
const REGISTRATION_LOCK: i64 = LOCK_BASE - 1;

/// The lock that serializes GPU registration between processes, held until dropped.
pub(super) struct RegistrationLock<'a>(&'a File);

/// How long a registration waits for another process's: registration takes
/// microseconds, so a holder this slow is stopped (SIGSTOP, a debugger, a frozen cgroup).
const REGISTRATION_WAIT_NS: u64 = 2_000_000_000;

impl<'a> RegistrationLock<'a> {
    /// Takes the lock, trying again every millisecond (a signal does not interrupt the
    /// wait), for at most [`REGISTRATION_WAIT_NS`].
    pub(super) fn take(file: &'a File) -> io::Result<RegistrationLock<'a>> {
        let start = monotonic_ns();
        loop {
            match lock_byte(
                file,
                REGISTRATION_LOCK,
                libc::F_WRLCK as i16,
                libc::F_OFD_SETLK,
            ) {
                Ok(_) => return Ok(RegistrationLock(file)),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EAGAIN | libc::EACCES | libc::EINTR)
                    ) => {}
                Err(e) => return Err(e),
            }
            if monotonic_ns().saturating_sub(start) > REGISTRATION_WAIT_NS {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "another process of the model has held the GPU table's lock for 2 s \
                     (is it stopped?)",
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

impl Drop for RegistrationLock<'_> {
    fn drop(&mut self) {
        let _ = lock_byte(
            self.0,
            REGISTRATION_LOCK,
            libc::F_UNLCK as i16,
            libc::F_OFD_SETLK,
        );
    }
}

/// The liveness lock of slot `index` in `file`: `cmd` (`F_OFD_SETLK`, `F_OFD_GETLK`) with
/// lock type `kind`.
pub(super) fn slot_lock(file: &File, index: u32, kind: i16, cmd: i32) -> io::Result<libc::flock> {
    lock_byte(file, LOCK_BASE + index as i64, kind, cmd)
}

/// An open-file-description lock `cmd` of type `kind` on the byte at `at` of `file`.
fn lock_byte(file: &File, at: i64, kind: i16, cmd: i32) -> io::Result<libc::flock> {
    // SAFETY: flock is plain data; all zeros is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = at;
    fl.l_len = 1;
    // SAFETY: fcntl with a valid flock on an open file.
    if unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl) } == 0 {
        Ok(fl)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether another open file description (another live process) holds the slot's lock.
pub(super) fn held_elsewhere(file: &File, index: u32) -> bool {
    match slot_lock(file, index, libc::F_WRLCK as i16, libc::F_OFD_GETLK) {
        Ok(fl) => fl.l_type != libc::F_UNLCK as i16,
        Err(_) => true, // cannot tell: assume alive (never reclaim what might be live)
    }
}

pub(super) fn monotonic_ns() -> u64 {
    // SAFETY: timespec is plain data; all zeros is a valid value.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime with a valid timespec (served by the vDSO, no system call).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The inode of this process's PID namespace (0 if unknown).
pub(super) fn own_pid_namespace() -> u64 {
    std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino())
}

/// A process's start time in clock ticks since boot (0 if unknown).
pub fn start_time(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat_field(&stat, 22)?.parse().ok())
        .unwrap_or(0)
}

/// Field `n` (numbered from 1, as proc(5) numbers them; 3 or more) of the text of a
/// `/proc/PID/stat` or `/proc/PID/task/TID/stat`. The command name (field 2) may contain
/// spaces and parentheses: fields are counted after its last `)`.
pub fn stat_field(stat: &str, n: usize) -> Option<&str> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(n.checked_sub(3)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis_of_the_name() {
        let stat = "42 (a) (b c) S 7 42 42 0 -1 4194560 1 2 3 4 150 25 0 0 20 0 1 0 9001 0";
        assert_eq!(stat_field(stat, 3), Some("S"));
        assert_eq!(stat_field(stat, 4), Some("7"));
        assert_eq!(
            (
                stat_field(stat, 14),
                stat_field(stat, 15),
                stat_field(stat, 22)
            ),
            (Some("150"), Some("25"), Some("9001"))
        );
        assert_eq!(stat_field(stat, 2), None);
        assert_eq!(stat_field("no name here", 3), None);
    }
}
