//! A model's Python environment as declared (`[model.python]`), and where the node builds
//! environments: declared values, which `pyenv` builds from.

use std::path::PathBuf;

/// A model's `python` table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PythonSpec {
    /// A requirements file (absolute path).
    pub requirements: Option<PathBuf>,
    /// Requirements given inline (`packages = ["torch==2.5.1", …]`).
    pub packages: Vec<String>,
    /// The interpreter version; None: the one uv finds.
    pub version: Option<String>,
    pub index_url: Option<String>,
    pub find_links: Vec<String>,
    /// Resolve and install from uv's cache and `find_links` only.
    pub offline: bool,
}

/// Where environments are built, with which uv, and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envs {
    pub dir: PathBuf,
    pub uv: PathBuf,
    /// The host user and group builds run as (`build_user`; `nobody` by default): never
    /// root, since a package's build hooks run there.
    pub user: (u32, u32),
}

/// The user builds run as when `build_user` is not given.
pub const BUILD_USER: &str = "nobody";
/// Its ids when the host has no such user (the kernel's overflow ids).
pub const BUILD_IDS: (u32, u32) = (65534, 65534);
