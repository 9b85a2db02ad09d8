//! `cuvisor check`: every invalid configuration form is rejected, before anything starts,
//! with the file, the line and a message that says what is accepted.

mod common;
use common::*;
use cuvisor::config::secrets::SecretError;
use std::process::Command;

fn check(text: &str) -> (i32, String, String) {
    let dir = TempDir::new("config");
    let path = dir.path("cuvisor.toml");
    std::fs::write(&path, text).unwrap();
    let out = run(Command::new(env!("CARGO_BIN_EXE_cuvisor"))
        .arg("check")
        .arg(&path));
    let err = stderr(&out).replace(&format!("{}:", path.display()), "FILE:");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        err,
    )
}

const MODEL: &str = "[[model]]\nname = \"m\"\ncommand = \"/bin/true\"\n";

#[test]
fn a_valid_configuration_passes() {
    let (code, out, err) = check(&format!(
        "[supervisor]\ngrace_period = \"2s\"\n\n{MODEL}\n[[model]]\nname = \"n\"\ncommand = \"true\"\n"
    ));
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("ok (2 model(s): m, n)\n"), "{out}");
}

#[test]
fn every_invalid_form_is_rejected_with_its_line() {
    // (text, the error: "FILE:LINE: message" prefix)
    let cases: &[(&str, &str)] = &[
        (
            "[[model]]\nname = \"m\"\ncommand = \"/bin/true\"\ncolour = \"red\"\n",
            "FILE:4: unknown field `colour`",
        ),
        (
            "[[model]]\nname = \"m\"\ncommand = 7\n",
            "FILE:3: invalid type: integer `7`, expected a string",
        ),
        (
            "[[model]]\nname = \"m\"\ncommand = \"/bin/true\"\nargs = \"x\"\n",
            "FILE:4: invalid type: string \"x\", expected a sequence",
        ),
        ("[[model]\n", "FILE:1: "),
        (
            "[[model]]\nname = \"a b\"\ncommand = \"/bin/true\"\n",
            "FILE:2: name = \"a b\": expected 1 to 64 letters",
        ),
        (
            "[[model]]\ncommand = \"/bin/true\"\n",
            "FILE:1: a [[model]] needs a name",
        ),
        (
            "[[model]]\nname = \"m\"\n",
            "FILE:1: model \"m\" needs a command",
        ),
        (
            "[[model]]\nname = \"m\"\ncommand = \"  \"\n",
            "FILE:3: command is empty",
        ),
        (
            &format!("{MODEL}gpu_quota = \"lots\"\n"),
            "FILE:4: gpu_quota: \"lots\" is not a size",
        ),
        (
            &format!("{MODEL}gpu_quota = \"0\"\n"),
            "FILE:4: gpu_quota = \"0\": a quota must be greater than 0",
        ),
        (
            &format!("{MODEL}mode = \"fast\"\n"),
            "FILE:4: mode = \"fast\": expected managed, device or off",
        ),
        (
            &format!("{MODEL}gpus = 0\n"),
            "FILE:4: gpus = 0: expected a number of GPUs from 1 to 16, or a list of GPU indices and UUIDs",
        ),
        (
            &format!("{MODEL}gpus = 17\n"),
            "FILE:4: gpus = 17: expected a number of GPUs from 1 to 16",
        ),
        (
            &format!("{MODEL}gpus = []\n"),
            "FILE:4: gpus = []: expected a number of GPUs",
        ),
        (
            &format!("{MODEL}gpus = [0, 1.5]\n"),
            "FILE:4: gpus: 1.5 is not a GPU: expected a number of GPUs",
        ),
        (
            &format!("{MODEL}gpus = [\"GPU-nope\"]\n"),
            "FILE:4: gpus: \"GPU-nope\" is not a GPU UUID",
        ),
        (
            &format!("{MODEL}gpus = 1\nenv = {{ CUDA_VISIBLE_DEVICES = \"0\" }}\n"),
            "FILE:5: env CUDA_VISIBLE_DEVICES: set by cuvisor from this model's gpus",
        ),
        (
            &format!("{MODEL}[model.serve]\naliases = [\"x\"]\n"),
            "FILE:4: serve needs health: the path that answers 200 once the server is ready",
        ),
        (
            &format!(
                "[supervisor]\nhttp = \"127.0.0.1:8000\"\n{MODEL}[model.serve]\nhealth = \"health\"\n"
            ),
            "FILE:7: serve.health = \"health\": expected a path such as /health",
        ),
        (
            &format!(
                "[supervisor]\nhttp = \"127.0.0.1:8000\"\n{MODEL}isolation = {{ network = true }}\n[model.serve]\nhealth = \"/h\"\n"
            ),
            "FILE:7: serve: the front door reaches the model on loopback, which isolation.network = true hides",
        ),
        (
            &format!("{MODEL}[model.serve]\nhealth = \"/h\"\n"),
            "FILE: model m has serve: set http in [supervisor]",
        ),
        (
            &format!("[supervisor]\nhttp_max_connections = 0\n{MODEL}"),
            "FILE:2: http_max_connections = 0: expected 1 to 1000000",
        ),
        (
            &format!("[supervisor]\nhttp_body_timeout = \"soon\"\n{MODEL}"),
            "FILE:2: http_body_timeout = \"soon\": expected a duration such as 500ms, 10s, 2m or 1h",
        ),
        (
            &format!("[supervisor]\nhttp_body_budget = \"12\"\n{MODEL}"),
            "FILE:2: http_body_budget = \"12\": expected a size from 1KiB to 1TiB, e.g. 256MiB",
        ),
        (
            &format!(
                "[supervisor]\nhttp = \"127.0.0.1:8000\"\n{MODEL}[model.serve]\nhealth = \"/h\"\naliases = [\"n\"]\n[[model]]\nname = \"n\"\ncommand = \"true\"\n"
            ),
            "FILE:8: model m: alias \"n\" already names model n",
        ),
        (
            &format!("{MODEL}min_instances = 0\nmax_instances = 2\n"),
            "FILE:1: min_instances and max_instances follow the front door's traffic: the model needs [model.serve]",
        ),
        (
            &format!(
                "[supervisor]\nhttp = \"127.0.0.1:8000\"\n{MODEL}instances = 2\nmax_instances = 3\n[model.serve]\nhealth = \"/h\"\n"
            ),
            "FILE:6: instances is the fixed case: with min_instances and max_instances, leave it out",
        ),
        (
            &format!(
                "[supervisor]\nhttp = \"127.0.0.1:8000\"\n{MODEL}min_instances = 3\nmax_instances = 2\n[model.serve]\nhealth = \"/h\"\n"
            ),
            "FILE:6: min_instances = 3: expected 0 (scale to zero) to max_instances (2)",
        ),
        (
            &format!("[supervisor]\nhttp = \"8000\"\n{MODEL}"),
            "FILE:2: http = \"8000\": expected an address such as 127.0.0.1:8000",
        ),
        (
            &format!("[supervisor]\nplacement = \"random\"\n{MODEL}"),
            "FILE:2: placement = \"random\": expected \"pack\" or \"spread\"",
        ),
        (
            &format!("[supervisor]\ngpu_overcommit = 0.0\n{MODEL}"),
            "FILE:2: gpu_overcommit = 0.0: expected a factor greater than 0 and at most 64",
        ),
        (
            &format!("[supervisor]\ngpu_overcommit = \"4x\"\n{MODEL}"),
            "FILE:2: gpu_overcommit = \"4x\": expected a factor",
        ),
        (
            &format!("{MODEL}memory_limit = \"1.5G\"\n"),
            "FILE:4: memory_limit = \"1.5G\": expected a size greater than 0",
        ),
        (
            &format!("{MODEL}cpu_limit = 0.0\n"),
            "FILE:4: cpu_limit = 0: expected a number of CPU cores",
        ),
        (
            &format!("{MODEL}pids_limit = 0\n"),
            "FILE:4: pids_limit = 0: expected at least 1",
        ),
        (
            &format!("{MODEL}instances = 65\n"),
            "FILE:4: instances = 65: expected 1 to 64",
        ),
        (
            &format!("{MODEL}restart = \"sometimes\"\n"),
            "FILE:4: restart = \"sometimes\": expected always, on-failure or never",
        ),
        (
            &format!("{MODEL}backoff_initial = \"1 s\"\n"),
            "FILE:4: backoff_initial = \"1 s\": expected a duration",
        ),
        (
            &format!("{MODEL}backoff_initial = \"2m\"\nbackoff_max = \"1m\"\n"),
            "FILE:4: backoff_initial must be greater than 0 and at most backoff_max",
        ),
        (
            &format!("{MODEL}cwd = \"relative\"\n"),
            "FILE:4: cwd = \"relative\": expected an absolute path",
        ),
        (
            &format!("{MODEL}user = \"no-such-user-here\"\n"),
            "FILE:4: user = \"no-such-user-here\": no such user",
        ),
        (
            &format!("{MODEL}group = \"no-such-group-here\"\n"),
            "FILE:4: group = \"no-such-group-here\": no such group",
        ),
        (
            &format!("{MODEL}env = {{ CUVISOR_QUOTA = \"1G\" }}\n"),
            "FILE:4: env CUVISOR_QUOTA: set by cuvisor",
        ),
        (
            &format!("{MODEL}bind_ro = [\"/no/such/path\"]\n"),
            "FILE:4: bind_ro \"/no/such/path\": no such file or directory",
        ),
        (
            &format!("{MODEL}isolation = {{ mount = false }}\nbind_ro = [\"/tmp\"]\n"),
            "FILE:5: bind_ro needs isolation.mount = true",
        ),
        (
            &format!("{MODEL}isolation = {{ pdi = true }}\n"),
            "FILE:4: unknown field `pdi`",
        ),
        (
            &format!("{MODEL}\n[[model]]\nname = \"m\"\ncommand = \"x\"\n"),
            "FILE:5: model \"m\" is declared twice",
        ),
        (
            &format!("[supervisor]\nsocket = \"run/c.sock\"\n{MODEL}"),
            "FILE:2: socket = \"run/c.sock\": expected an absolute path",
        ),
        (
            &format!("[supervisor]\nlisten = \"0.0.0.0:9400\"\n{MODEL}"),
            "FILE:2: listen = \"0.0.0.0:9400\": the control API listens on loopback only",
        ),
        (
            &format!("[supervisor]\nlisten = \"localhost\"\n{MODEL}"),
            "FILE:2: listen = \"localhost\": expected an address",
        ),
        (
            &format!("[supervisor]\nshim = \"/no/such.so\"\n{MODEL}"),
            "FILE:2: shim = \"/no/such.so\": no such file",
        ),
        (
            &format!("[supervisor]\ngrace_period = \"forever\"\n{MODEL}"),
            "FILE:2: grace_period = \"forever\": expected a duration",
        ),
        (
            &format!("[supervisor]\nlogs = \"logs\"\n{MODEL}"),
            "FILE:2: logs = \"logs\": expected an absolute path",
        ),
        (
            &format!("[supervisor]\nhttp = true\n{MODEL}"),
            "FILE:2: invalid type: boolean `true`, expected a string",
        ),
        (
            &format!("[supervisor]\nfront_door = true\n{MODEL}"),
            "FILE:2: unknown field `front_door`",
        ),
        (
            "[supervisor]\n",
            "FILE: no [[model]]: declare at least one model to run",
        ),
        // Issue 10, finding 6: values `check` used to accept and `run` panicked on.
        (
            &format!("[supervisor]\ngrace_period = \"18446744073709551615s\"\n{MODEL}"),
            "FILE:2: grace_period = \"18446744073709551615s\": at most 24h",
        ),
        (
            &format!(
                "{MODEL}backoff_initial = \"18446744073709551615ms\"\nbackoff_max = \"18446744073709551615ms\"\n"
            ),
            "FILE:4: backoff_initial = \"18446744073709551615ms\": at most 24h",
        ),
        (
            &format!("{MODEL}backoff_max = \"100000h\"\n"),
            "FILE:4: backoff_max = \"100000h\": at most 24h",
        ),
        (
            &format!("{MODEL}cwd = \"/tmp/a\\u0000b\"\n"),
            "FILE:4: cwd: a NUL byte",
        ),
        (
            "[[model]]\nname = \"m\"\ncommand = \"/bin/tr\\u0000ue\"\n",
            "FILE:3: command: a NUL byte",
        ),
        (
            &format!("{MODEL}args = [\"ok\", \"a\\u0000b\"]\n"),
            "FILE:4: args: a NUL byte",
        ),
        (
            &format!("[supervisor]\nledger_dir = \"/tmp/\\u0000\"\n{MODEL}"),
            "FILE:2: ledger_dir: a NUL byte",
        ),
        (
            &format!("{MODEL}bind_ro = [\"/tmp/\\u0000\"]\n"),
            "FILE:4: bind_ro: a NUL byte",
        ),
        (
            &format!("[supervisor]\ncgroup_name = \"system.slice\"\n{MODEL}"),
            "FILE:2: cgroup_name = \"system.slice\": that name belongs to systemd or to cuvisor exec",
        ),
        (
            &format!("[supervisor]\ncgroup_name = \"cuvisor-exec\"\n{MODEL}"),
            "FILE:2: cgroup_name = \"cuvisor-exec\": that name belongs to systemd or to cuvisor exec",
        ),
        // isolation.user needs host ids, and is root in its namespace (no user, group).
        (
            &format!("{MODEL}isolation = {{ user = true }}\n"),
            "FILE:1: isolation.user needs host ids for the namespace: set userns_range in [supervisor]",
        ),
        (
            &format!(
                "[supervisor]\nuserns_range = \"100000-165535\"\n{MODEL}isolation = {{ user = true }}\nuser = \"0\"\n"
            ),
            "FILE:3: isolation.user runs the worker as root in its own user namespace: remove user and group",
        ),
        (
            &format!(
                "[supervisor]\nuserns_range = \"100000-165534\"\n{MODEL}isolation = {{ user = true }}\n"
            ),
            "FILE:3: userns_range 100000-165534 has no room for another 65536 ids",
        ),
        (
            &format!("[supervisor]\nuserns_range = \"0-65535\"\n{MODEL}"),
            "FILE:2: userns_range = \"0-65535\": expected FIRST-LAST host ids",
        ),
        (
            &format!("[supervisor]\nuserns_range = \"5\"\n{MODEL}"),
            "FILE:2: userns_range = \"5\": expected FIRST-LAST host ids",
        ),
        (
            &format!("[supervisor]\nuserns_range = \"65534-200000\"\n{MODEL}"),
            "FILE:2: userns_range = \"65534-200000\": user nobody (uid 65534) has an id in it",
        ),
        // Finding 4: the id setresuid/setresgid read as "leave unchanged".
        (
            &format!("{MODEL}user = \"4294967295\"\n"),
            "FILE:4: user = \"4294967295\": 4294967295 is not a usable id",
        ),
        (
            &format!("{MODEL}user = \"0\"\ngroup = \"4294967295\"\n"),
            "FILE:5: group = \"4294967295\": 4294967295 is not a usable id",
        ),
        // Issue 27: the dashboard's listener and its token.
        (
            &format!("[supervisor]\ndashboard = \"localhost\"\n{MODEL}"),
            "FILE:2: dashboard = \"localhost\": expected an address such as 127.0.0.1:9470",
        ),
        (
            &format!("[supervisor]\ndashboard_token = \"/etc/hostname\"\n{MODEL}"),
            "FILE:2: dashboard_token: set dashboard too (the listener it guards)",
        ),
    ];
    for (text, expected) in cases {
        let (code, _, err) = check(text);
        assert_eq!(code, 1, "{text}: must fail");
        assert!(
            err.lines().any(|l| l.starts_with(expected)),
            "{text}\nexpected {expected:?}\ngot {err}"
        );
    }
}

#[test]
fn all_errors_are_reported_at_once() {
    let (code, _, err) = check(&format!(
        "{MODEL}mode = \"x\"\nrestart = \"y\"\ninstances = 0\n"
    ));
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 3, "{err}");
}

#[test]
fn a_missing_file_is_an_error() {
    let out =
        run(Command::new(env!("CARGO_BIN_EXE_cuvisor")).args(["check", "/no/such/cuvisor.toml"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("/no/such/cuvisor.toml: cannot read: "),
        "{}",
        stderr(&out)
    );
}

/// Issue 10, finding 6, as a property: every configuration `check` accepts turns into
/// launch plans (program, argv, environment, credentials, namespaces), backoff delays and
/// deadlines without panicking. Configurations are drawn from values that are valid, at
/// their limits, just past them, or hostile (NUL bytes, huge numbers, the "no change" id).
#[test]
fn every_accepted_configuration_turns_into_launch_plans_without_panicking() {
    use cuvisor::config::Config;
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};
    let tokens = TempDir::new("tokens");
    let token = |name: &str, mode: u32| {
        let path = tokens.path(name);
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        format!("\"{}\"", path.display())
    };
    let (good_token, open_token) = (token("good", 0o600), token("open", 0o644));
    const DURATIONS: &[&str] = &[
        "1ms",
        "0ms",
        "500ms",
        "24h",
        "1440m",
        "86401s",
        "25h",
        "18446744073709551615ms",
        "18446744073709551615s",
        "5124095576030431h",
        "x",
    ];
    let keys: &[(&str, &[&str])] = &[
        (
            "args",
            &["[]", "[\"a\", \"b\"]", "[\"a\\u0000\"]", "[\"\"]"],
        ),
        (
            "env",
            &[
                "{}",
                "{ A = \"b\" }",
                "{ A = \"\\u0000\" }",
                "{ \"\" = \"x\" }",
                "{ CUVISOR_QUOTA = \"1\" }",
            ],
        ),
        ("cwd", &["\"/tmp\"", "\"/\"", "\"rel\"", "\"/tmp/\\u0000\""]),
        (
            "user",
            &[
                "\"0\"",
                "\"nobody\"",
                "\"4294967295\"",
                "\"4294967294\"",
                "\"-1\"",
                "\"no-such-user-x\"",
            ],
        ),
        ("group", &["\"0\"", "\"4294967295\"", "\"65534\""]),
        (
            "gpu_quota",
            &[
                "\"1\"",
                "\"0\"",
                "\"100%\"",
                "\"101%\"",
                "\"16777215TiB\"",
                "\"16777216TiB\"",
                "\"1.5GiB\"",
            ],
        ),
        ("mode", &["\"managed\"", "\"device\"", "\"off\"", "\"x\""]),
        (
            "memory_limit",
            &["\"1\"", "\"0\"", "\"16777215TiB\"", "\"-1\""],
        ),
        (
            "cpu_limit",
            &["0.01", "4096.0", "0.0", "1e300", "nan", "-1.0"],
        ),
        (
            "pids_limit",
            &["1", "0", "9223372036854775807", "-9223372036854775808"],
        ),
        ("instances", &["1", "64", "65", "0", "-1"]),
        (
            "restart",
            &["\"always\"", "\"never\"", "\"on-failure\"", "\"x\""],
        ),
        ("backoff_initial", DURATIONS),
        ("backoff_max", DURATIONS),
        (
            "isolation",
            &[
                "{ pid = false, mount = false }",
                "{ network = true }",
                "{}",
                "{ user = true }",
                "{ user = true, mount = false }",
            ],
        ),
        (
            "capabilities",
            &[
                "[]",
                "[\"CAP_NET_BIND_SERVICE\"]",
                "[\"CAP_NOPE\"]",
                "[\"\"]",
            ],
        ),
        (
            "bind_ro",
            &["[\"/tmp\"]", "[\"/no/such\"]", "[\"/\\u0000\"]"],
        ),
    ];
    let supervisor_keys: &[(&str, &[&str])] = &[
        ("grace_period", DURATIONS),
        ("ledger_dir", &["\"/tmp/l\"", "\"l\"", "\"/\\u0000\""]),
        ("cgroup_name", &["\"cv\"", "\"a/b\"", "\"\""]),
        (
            "listen",
            &["\"127.0.0.1:0\"", "\"0.0.0.0:1\"", "\"[::1]:65535\""],
        ),
        (
            "listen_token",
            &[&good_token, &open_token, "\"relative\"", "\"/no/such\""],
        ),
        (
            "userns_range",
            &[
                "\"100000-165535\"",
                "\"1-4294967294\"",
                "\"4294967200-4294967294\"",
                "\"0-9\"",
                "\"9-1\"",
            ],
        ),
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    // The first value of each list is valid; any value, one time in four.
    let pick = |next: &mut dyn FnMut(usize) -> usize, n: usize| {
        if next(4) == 0 { next(n) } else { 0 }
    };
    let (mut accepted, mut planned) = (0, 0);
    for _ in 0..3000 {
        let mut text = String::from("[supervisor]\n");
        for (key, values) in supervisor_keys {
            if next(2) == 0 {
                text += &format!("{key} = {}\n", values[pick(&mut next, values.len())]);
            }
        }
        for m in 0..1 + next(2) {
            text += &format!("[[model]]\nname = \"m{m}\"\ncommand = \"/bin/true\"\n");
            for (key, values) in keys {
                if next(3) == 0 {
                    text += &format!("{key} = {}\n", values[pick(&mut next, values.len())]);
                }
            }
        }
        let Ok(config) = Config::parse(std::path::Path::new("p.toml"), &text) else {
            continue;
        };
        accepted += 1;
        let now = Instant::now();
        let _ = now + config.supervisor.grace_period;
        for m in &config.models {
            if cuvisor::node::worker::worker_spec(
                m,
                &config.supervisor,
                std::path::Path::new("/shim.so"),
                1,
                cuvisor::node::worker::Placement::default(),
            )
            .is_ok()
            {
                planned += 1;
            }
            for failures in [0, 1, 2, 20, 21, 40, u32::MAX] {
                let delay = cuvisor::core::supervisor::backoff_delay(m, failures);
                assert!(
                    delay <= m.backoff_max && delay >= m.backoff_initial.min(m.backoff_max),
                    "{text}"
                );
                let _ = now + delay;
            }
            assert!(m.uid != Some(u32::MAX) && m.gid != Some(u32::MAX), "{text}");
            if let Some(first) = m.host_ids {
                let (lo, hi) = config.supervisor.userns_range.unwrap();
                assert!(
                    first >= lo && u64::from(first) + 65535 <= u64::from(hi),
                    "{text}"
                );
            }
            assert!(m.backoff_max <= Duration::from_secs(86400), "{text}");
        }
    }
    assert!(
        accepted > 100 && planned > 100,
        "{accepted} accepted, {planned} planned: the generator must reach valid configurations"
    );
}

/// Issue 10: settings that leave a model able to reach the others pass `check` with a
/// warning that says what and how to close it; the default (namespaces) has none.
#[test]
fn check_warns_about_models_that_can_reach_the_others() {
    let (code, out, err) = check(&format!(
        "{MODEL}isolation = {{ pid = false, mount = false }}\ncapabilities = [\"CAP_SYS_NICE\"]\n[[model]]\nname = \"n\"\ncommand = \"true\"\n[[model]]\nname = \"u\"\ncommand = \"true\"\nuser = \"nobody\"\nisolation = {{ pid = false, mount = false }}\n"
    ));
    assert_eq!(code, 0);
    assert!(out.ends_with("ok (3 model(s): m, n, u)\n"), "{out}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("WARNING")).collect();
    let expected = [
        // The default (root in namespaces) is told once, for every model it concerns
        // (issue 26: not once per model); a model of its own user, not at all.
        "WARNING: models m, n: runs as root of the host: ",
        "WARNING: model m: runs as root without a PID namespace: it can signal and trace",
        "WARNING: model m: runs as root without a mount namespace: it can open every model's ledger",
        "WARNING: model m: keeps capabilities on the host",
    ];
    assert_eq!(warnings.len(), expected.len(), "{err}");
    for (w, e) in warnings.iter().zip(expected) {
        assert!(w.starts_with(e), "expected {e:?}, got {w:?}");
    }
}

/// A host that is not this machine: what the configuration means is decided against it
/// alone (`Config::parse_on`), so a check needs no user, file or CPU of the machine that
/// runs it.
struct FakeHost;

impl cuvisor::config::Host for FakeHost {
    fn user(&self, name: &str) -> Option<(u32, u32)> {
        (name == "alice").then_some((1000, 1000))
    }
    fn group(&self, name: &str) -> Option<u32> {
        (name == "gpu").then_some(44)
    }
    fn id_in_use(&self, first: u32, last: u32) -> Option<String> {
        (first..=last)
            .contains(&200_000)
            .then(|| "user bob (uid 200000)".to_owned())
    }
    fn is_file(&self, path: &std::path::Path) -> bool {
        path == std::path::Path::new("/models/requirements.txt")
    }
    fn exists(&self, path: &std::path::Path) -> bool {
        path == std::path::Path::new("/data")
    }
    fn read_token(&self, path: &std::path::Path) -> Result<String, SecretError> {
        if path == std::path::Path::new("/secret/token") {
            Ok("0123456789abcdef".into())
        } else {
            Err(std::io::Error::from_raw_os_error(libc::ENOENT).into())
        }
    }
    fn read_keys(&self, _: &std::path::Path) -> Result<Vec<String>, SecretError> {
        Err(SecretError::Shared { mode: 0o644 })
    }
    fn online_cpus(&self) -> Option<cuvisor::config::cpus::CpuSet> {
        "0-3".parse().ok()
    }
    fn beside_me(&self, name: &str) -> Option<std::path::PathBuf> {
        (name == "uv").then(|| "/opt/venv/bin/uv".into())
    }
}

/// Issue 27: without `uv` in the file, the uv beside the binary (where `pip install
/// cuvisor` puts the one it depends on), else `uv` (the PATH's); `uv` in the file wins.
#[test]
fn uv_is_the_one_beside_the_binary_unless_the_file_says() {
    use cuvisor::config::Config;
    let path = std::path::Path::new("h.toml");
    let model = "[[model]]\nname = \"m\"\ncommand = \"/bin/true\"\n";
    let beside = Config::parse_on(path, model, &FakeHost).unwrap();
    assert_eq!(
        beside.supervisor.envs.uv,
        std::path::Path::new("/opt/venv/bin/uv")
    );
    let said = format!("[supervisor]\nuv = \"/usr/local/bin/uv\"\n{model}");
    let said = Config::parse_on(path, &said, &FakeHost).unwrap();
    assert_eq!(
        said.supervisor.envs.uv,
        std::path::Path::new("/usr/local/bin/uv")
    );
    // A host with nothing beside the binary (the trait's default): the PATH's.
    struct Bare;
    impl cuvisor::config::Host for Bare {
        fn user(&self, _: &str) -> Option<(u32, u32)> {
            None
        }
        fn group(&self, _: &str) -> Option<u32> {
            None
        }
        fn id_in_use(&self, _: u32, _: u32) -> Option<String> {
            None
        }
        fn is_file(&self, _: &std::path::Path) -> bool {
            false
        }
        fn exists(&self, _: &std::path::Path) -> bool {
            false
        }
        fn read_token(&self, _: &std::path::Path) -> Result<String, SecretError> {
            Err(std::io::Error::from_raw_os_error(libc::ENOENT).into())
        }
        fn read_keys(&self, _: &std::path::Path) -> Result<Vec<String>, SecretError> {
            Err(std::io::Error::from_raw_os_error(libc::ENOENT).into())
        }
        fn online_cpus(&self) -> Option<cuvisor::config::cpus::CpuSet> {
            None
        }
    }
    let bare = Config::parse_on(path, model, &Bare).unwrap();
    assert_eq!(bare.supervisor.envs.uv, std::path::Path::new("uv"));
}

/// Issue 27: a dashboard beyond loopback is a warning (no login: who reaches it sees the
/// models), saying whether its actions are guarded; on loopback, none.
#[test]
fn check_warns_of_a_dashboard_beyond_loopback() {
    let (code, _, err) = check(&format!(
        "[supervisor]\ndashboard = \"0.0.0.0:9470\"\n{MODEL}"
    ));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "WARNING: the dashboard listens on 0.0.0.0:9470, beyond this host: whoever reaches it \
             sees the models' names, states and use, and no token guards its actions: it is \
             read-only (listen on 127.0.0.1 behind an authenticating proxy, or firewall it)"
        ),
        "{err}"
    );
    let (code, _, err) = check(&format!(
        "[supervisor]\ndashboard = \"127.0.0.1:9470\"\n{MODEL}"
    ));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("dashboard"), "{err}");
}

#[test]
fn the_host_is_asked_only_through_the_host_it_is_checked_against() {
    use cuvisor::config::Config;
    let path = std::path::Path::new("h.toml");
    // Valid on the fake host, though this machine has no /data, no alice and no token.
    let valid = "[supervisor]\nlisten = \"127.0.0.1:9400\"\nlisten_token = \"/secret/token\"\n\
                 userns_range = \"100000-165535\"\n\n[[model]]\nname = \"m\"\ncommand = \"/bin/true\"\n\
                 user = \"alice\"\ngroup = \"gpu\"\ncpus = \"0-3\"\nbind_ro = [\"/data\"]\n\
                 python = { requirements = \"/models/requirements.txt\" }\n";
    let config = Config::parse_on(path, valid, &FakeHost).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        (config.models[0].uid, config.models[0].gid),
        (Some(1000), Some(44))
    );
    // And each answer of the host decides its error.
    let invalid = "[supervisor]\nlisten = \"127.0.0.1:9400\"\nlisten_token = \"/other\"\n\
                   userns_range = \"165536-231071\"\napi_keys = \"/keys\"\n\n[[model]]\nname = \"m\"\n\
                   command = \"/bin/true\"\nuser = \"carol\"\ngroup = \"video\"\ncpus = \"0-7\"\n\
                   bind_ro = [\"/srv\"]\npython = { requirements = \"/r.txt\" }\n";
    let errors: Vec<String> = Config::parse_on(path, invalid, &FakeHost)
        .expect_err("invalid on the fake host")
        .iter()
        .map(|e| format!("{}: {}", e.line, e.message))
        .collect();
    for expected in [
        "3: listen_token = \"/other\": cannot read: No such file or directory (os error 2)",
        "4: userns_range = \"165536-231071\": user bob (uid 200000) has an id in it; choose ids no user or group of the host has",
        "5: api_keys = \"/keys\": other users can read it (mode 0644): chmod 600",
        "10: user = \"carol\": no such user",
        "11: group = \"video\": no such group",
        "12: cpus = \"0-7\": this host's online CPUs are 0-3",
        "13: bind_ro \"/srv\": no such file or directory",
        "14: python.requirements = \"/r.txt\": no such file",
    ] {
        assert!(
            errors.iter().any(|e| e == expected),
            "{expected:?} not in {errors:#?}"
        );
    }
}
