//! The secrets a configuration names (the control API's token, the front door's API keys):
//! private files, read and checked where the configuration is checked and where the
//! servers start.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Why a secret's file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read: {0}")]
    Unreadable(#[from] std::io::Error),
    #[error("not a regular file")]
    NotAFile,
    #[error("other users can read it (mode {mode:04o}): chmod 600")]
    Shared { mode: u32 },
    #[error("it belongs to uid {owner}, not to this user (uid {me}) or root: chown it")]
    Owner { owner: u32, me: u32 },
    #[error("expected one token of at least 16 characters, without spaces")]
    NotAToken,
    #[error("expected one key per line, each of at least 16 characters")]
    NotKeys,
    #[error("a key must be printable ASCII without spaces (an HTTP header carries nothing else)")]
    KeyNotAscii,
}

/// A secret's file: a regular file (no symbolic link) of this process's user or root,
/// that only its owner can read. Another user's file is refused even so: that user could
/// change the secret.
pub fn read_private(path: &Path) -> Result<String, SecretError> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.file_type().is_file() {
        return Err(SecretError::NotAFile);
    }
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me && meta.uid() != 0 {
        return Err(SecretError::Owner {
            owner: meta.uid(),
            me,
        });
    }
    if meta.mode() & 0o077 != 0 {
        return Err(SecretError::Shared {
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(std::fs::read_to_string(path)?)
}

/// The token of `listen_token`: a private file (see `read_private`) holding at least 16
/// characters (surrounding whitespace is not part of it).
pub fn read_token(path: &Path) -> Result<String, SecretError> {
    let text = read_private(path)?;
    let token = text.trim();
    if token.len() < 16 || token.chars().any(char::is_whitespace) {
        return Err(SecretError::NotAToken);
    }
    Ok(token.to_owned())
}

/// The API keys of `api_keys`: one per line (blank lines and `#` comments skipped), each
/// at least 16 characters; the file must be readable by its owner only.
pub fn read_keys(path: &Path) -> Result<Vec<String>, SecretError> {
    let text = read_private(path)?;
    let keys: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if keys.is_empty()
        || keys
            .iter()
            .any(|k| k.len() < 16 || k.contains(char::is_whitespace))
    {
        return Err(SecretError::NotKeys);
    }
    if keys
        .iter()
        .any(|k| !k.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(SecretError::KeyNotAscii);
    }
    Ok(keys)
}
