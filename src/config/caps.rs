//! Linux capabilities by name, for a model's `capabilities = [...]`.

/// Every capability the kernel headers name, by number (`CAP_CHOWN` is 0).
pub const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The number of a capability named `CAP_…` (the prefix and case are as the kernel
/// spells them).
pub fn by_name(name: &str) -> Option<u32> {
    NAMES.iter().position(|n| *n == name).map(|i| i as u32)
}

/// A set of capabilities, one bit per number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    pub fn contains(self, cap: u32) -> bool {
        cap < 64 && self.0 & (1 << cap) != 0
    }

    pub fn names(self) -> Vec<&'static str> {
        (0..NAMES.len() as u32)
            .filter(|&c| self.contains(c))
            .map(|c| NAMES[c as usize])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_their_numbers() {
        assert_eq!(by_name("CAP_CHOWN"), Some(0));
        assert_eq!(by_name("CAP_NET_BIND_SERVICE"), Some(10));
        assert_eq!(by_name("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(by_name("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(by_name("cap_chown"), None);
        assert_eq!(
            CapSet(1 << 10 | 1 << 21).names(),
            ["CAP_NET_BIND_SERVICE", "CAP_SYS_ADMIN"]
        );
    }
}
