//! Issue 25, the front line: the front door and the supervisor's other surfaces against
//! the network and against local users. Each test reproduces one finding of the review
//! (its number in the issue is in the test's doc) and checks its fix.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;

const TOKEN: &str = "0123456789abcdef0123";

/// `cuvisor check` on a configuration with `settings` in `[supervisor]` and one model:
/// its exit status and its errors (the file's path written `FILE`).
fn check(dir: &TempDir, settings: &str) -> (Option<i32>, String) {
    let path = dir.path("cuvisor.toml");
    std::fs::write(
        &path,
        format!("[supervisor]\n{settings}\n[[model]]\nname = \"m\"\ncommand = \"/bin/true\"\n"),
    )
    .unwrap();
    let out = run(std::process::Command::new(env!("CARGO_BIN_EXE_cuvisor"))
        .arg("check")
        .arg(&path));
    (
        out.status.code(),
        stderr(&out).replace(&format!("{}:", path.display()), "FILE:"),
    )
}

/// Finding 15: a token or key file that belongs to another user is refused, even when
/// only its owner can read it: that user could change it.
#[test]
fn a_secret_file_of_another_user_is_refused() {
    let dir = TempDir::new("secret-owner");
    let token = dir.path("token");
    let keys = dir.path("keys");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::write(&keys, format!("{TOKEN}\n")).unwrap();
    for f in [&token, &keys] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(f, Some(65534), Some(65534)).unwrap();
    }
    let settings = format!(
        "listen = \"127.0.0.1:9400\"\nlisten_token = \"{}\"\n\
         http = \"127.0.0.1:9401\"\napi_keys = \"{}\"",
        token.display(),
        keys.display()
    );
    let (code, err) = check(&dir, &settings);
    assert_eq!(code, Some(1), "{err}");
    for (line, key) in [(3, "listen_token"), (5, "api_keys")] {
        let path = if key == "api_keys" { &keys } else { &token };
        let expected = format!(
            "FILE:{line}: {key} = \"{}\": it belongs to uid 65534, not to this user (uid 0) or root: chown it",
            path.display()
        );
        assert!(err.contains(&expected), "{expected}\n{err}");
    }
    // The same files, the supervisor's own: accepted.
    for f in [&token, &keys] {
        std::os::unix::fs::chown(f, Some(0), Some(0)).unwrap();
    }
    let (code, err) = check(&dir, &settings);
    assert_eq!(code, Some(0), "{err}");
}
