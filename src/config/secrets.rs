//! The secrets a configuration names (the control API's token, the front door's API keys):
//! private files, read and checked where the configuration is checked and where the
//! servers start.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A secret's file: a regular file that only its owner can read (no symbolic link).
pub fn read_private(path: &Path) -> Result<String, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "other users can read it (mode {:04o}): chmod 600",
            meta.mode() & 0o7777
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))
}

/// The token of `listen_token`: a private file (see `read_private`) holding at least 16
/// characters (surrounding whitespace is not part of it).
pub fn read_token(path: &Path) -> Result<String, String> {
    let text = read_private(path)?;
    let token = text.trim();
    if token.len() < 16 || token.chars().any(char::is_whitespace) {
        return Err("expected one token of at least 16 characters, without spaces".into());
    }
    Ok(token.to_owned())
}

/// The API keys of `api_keys`: one per line (blank lines and `#` comments skipped), each
/// at least 16 characters; the file must be readable by its owner only.
pub fn read_keys(path: &Path) -> Result<Vec<String>, String> {
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
        return Err("expected one key per line, each of at least 16 characters".into());
    }
    Ok(keys)
}
