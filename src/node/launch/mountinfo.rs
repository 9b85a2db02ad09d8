//! Which mounts become read-only for a worker: the kernel interfaces under `/proc` and
//! `/sys`, read from `/proc/self/mountinfo`.

use super::spec::ReadOnly;
use std::ffi::CString;

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

#[cfg(test)]
mod tests {
    use super::*;

    /// A host's mountinfo, as this machine's kind writes it (cgroup v1 and the unified
    /// hierarchy, binfmt_misc under /proc/sys, a look-alike `/sysroot`).
    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
24 23 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
25 24 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw
26 24 0:24 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,memory
27 23 0:6 / /sys/kernel/security rw,nosuid,nodev,noexec,relatime shared:11 - securityfs securityfs rw
28 22 0:5 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
29 28 0:25 / /proc/sys/fs/binfmt_misc rw,relatime shared:13 - autofs systemd-1 rw
30 22 8:2 / /sysroot rw,noatime shared:14 - ext4 /dev/sda2 rw
31 23 0:26 / /sys/fs/fuse\\040odd rw,relatime shared:15 - fusectl fusectl rw
";

    fn paths(r: &[ReadOnly]) -> Vec<&str> {
        r.iter().map(|r| r.path.to_str().unwrap()).collect()
    }

    const PROC: [&str; 4] = ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"];

    #[test]
    fn every_mount_under_sys_and_the_proc_interfaces_become_read_only() {
        let r = kernel_interfaces(MOUNTINFO, false);
        let sys = [
            "/sys",
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup/memory",
            "/sys/kernel/security",
        ];
        assert_eq!(paths(&r), [&sys[..], &PROC[..]].concat());
        // Remounted with the options they have (read-only is added by the child).
        let sysfs = &r[0];
        assert_eq!(
            sysfs.flags,
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RELATIME
        );
        assert!(!sysfs.bind && !sysfs.optional);
        // The /proc interfaces are bound onto themselves, and may be absent.
        for p in &r[sys.len()..] {
            assert!(p.bind && p.optional, "{:?}", p.path);
            assert_eq!(p.flags, libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC);
        }
    }

    #[test]
    fn with_its_own_sysfs_only_the_cgroup_tree_is_left_of_the_hosts_sys() {
        let r = kernel_interfaces(MOUNTINFO, true);
        let cgroups = [
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup/memory",
        ];
        assert_eq!(paths(&r), [&cgroups[..], &PROC[..]].concat());
    }

    /// A path that mountinfo escapes (`\040` for a space) is left as it is: the kernel's
    /// escaping is not undone here, so such a mount (made by the host's root, never by a
    /// worker) is not remounted. Nothing outside `/sys` is taken for it (`/sysroot`).
    #[test]
    fn escaped_and_look_alike_paths_are_left_alone() {
        let r = kernel_interfaces(MOUNTINFO, false);
        assert!(
            !paths(&r)
                .iter()
                .any(|p| p.contains("fuse") || *p == "/sysroot")
        );
        assert_eq!(paths(&kernel_interfaces("", false)), PROC);
        assert_eq!(paths(&kernel_interfaces("garbage\n1 2", false)), PROC);
    }
}
