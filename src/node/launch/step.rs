//! The steps of a worker's start in the cloned child, as the child reports the one that
//! failed to the supervisor (its number and `errno`, on a pipe), and the error they make.

use crate::node::cgroups::CgroupError;
use std::io;

/// A step of the child's work between `clone()` and `exec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Step {
    WaitForSupervisor,
    MakeRootPrivate,
    MountProc,
    MakeReadOnly,
    SetHostname,
    ForkWorker,
    DropGroups,
    SetGroup,
    SetUser,
    ChangeDirectory,
    RedirectOutput,
    Exec,
    ShowOwnLedger,
    DropCapabilities,
    Cover,
    MountOwnSys,
    ShowOwnView,
    ShowOwnDevices,
}

impl Step {
    const ALL: [Step; 18] = [
        Step::WaitForSupervisor,
        Step::MakeRootPrivate,
        Step::MountProc,
        Step::MakeReadOnly,
        Step::SetHostname,
        Step::ForkWorker,
        Step::DropGroups,
        Step::SetGroup,
        Step::SetUser,
        Step::ChangeDirectory,
        Step::RedirectOutput,
        Step::Exec,
        Step::ShowOwnLedger,
        Step::DropCapabilities,
        Step::Cover,
        Step::MountOwnSys,
        Step::ShowOwnView,
        Step::ShowOwnDevices,
    ];

    /// The step the child reported by its number, if it is one.
    pub fn from_report(n: i32) -> Option<Step> {
        Step::ALL.iter().copied().find(|s| *s as i32 == n)
    }

    /// What the step does, as errors say it.
    pub fn describe(self) -> &'static str {
        match self {
            Step::WaitForSupervisor => "wait for the supervisor",
            Step::MakeRootPrivate => "make / private",
            Step::MountProc => "mount /proc",
            Step::MakeReadOnly => "make a path read-only",
            Step::SetHostname => "set the hostname",
            Step::ForkWorker => "fork the worker",
            Step::DropGroups => "drop supplementary groups",
            Step::SetGroup => "set the group",
            Step::SetUser => "set the user",
            Step::ChangeDirectory => "change directory",
            Step::RedirectOutput => "redirect output",
            Step::Exec => "exec",
            Step::ShowOwnLedger => "show the worker its own ledger only",
            Step::DropCapabilities => "drop capabilities",
            Step::Cover => "cover a path it must not see (the control socket, the ledgers)",
            Step::MountOwnSys => "mount its own /sys",
            Step::ShowOwnView => "show the worker its own memory and CPUs",
            Step::ShowOwnDevices => "show the worker its own GPUs' device nodes",
        }
    }
}

/// Why a worker did not start: a step failed (in the child, or the supervisor's part
/// of it), or the child could not be put in its cgroups.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{step}: {source}")]
    Step {
        step: &'static str,
        source: io::Error,
    },
    #[error("join the cgroups: {0}")]
    Join(#[source] CgroupError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_comes_back_from_its_report() {
        for s in Step::ALL {
            assert_eq!(Step::from_report(s as i32), Some(s));
        }
        assert_eq!(Step::from_report(Step::ALL.len() as i32), None);
        assert_eq!(Step::from_report(-1), None);
    }
}
