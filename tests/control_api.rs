//! Issue 12, the HTTP stack: the control API tried as an attacker would. Each test plays
//! one attack of the issue against `cuvisor run` and shows that the API refuses it, stays
//! small, and keeps serving its owner (and restarting crashed models) meanwhile.

mod common;
use common::supervisor::*;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

const TOKEN: &str = "4f1c2d8e9a7b6c5d4e3f2a1b";

/// A supervisor whose control API also listens on a loopback TCP port, with a token file.
fn with_tcp(tag: &str, models: &str) -> (Supervisor, u16, TempDir) {
    with_tcp_api(tag, TOKEN, models)
}

/// A model that sleeps; and one that crashes every 200 ms and is always restarted.
const MODELS: &str = "[[model]]\nname = \"calm\"\ncommand = \"sleep\"\nargs = [\"100000\"]\n\
                      [[model]]\nname = \"crashy\"\ncommand = \"sh\"\nargs = [\"-c\", \"sleep 0.2; exit 1\"]\n\
                      restart = \"always\"\nbackoff_initial = \"10ms\"\nbackoff_max = \"10ms\"\n";

/// Sends `request` and reads the whole answer (the server closes after one).
fn exchange(mut stream: impl Read + Write, request: &str) -> String {
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

fn tcp_request(port: u16, head: &str) -> String {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    exchange(stream, head)
}

fn status_code(answer: &str) -> &str {
    answer.split_whitespace().nth(1).unwrap_or("none")
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Over TCP every request needs the token and a loopback Host: without them nothing is
/// read, stopped or started, whatever the method.
#[test]
fn tcp_requests_need_the_token_and_a_loopback_host() {
    let (mut s, port, _token) = with_tcp("tcp-auth", MODELS);
    let host = format!("127.0.0.1:{port}");
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    let cases = [
        (
            format!("GET /models HTTP/1.1\r\nHost: {host}\r\n\r\n"),
            "401",
        ),
        (
            format!("POST /models/calm/stop HTTP/1.1\r\nHost: {host}\r\n\r\n"),
            "401",
        ),
        (
            format!(
                "POST /models/calm/stop HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}x\r\n\r\n",
                &TOKEN[..TOKEN.len() - 1]
            ),
            "401",
        ),
        (
            format!("POST /models/calm/stop HTTP/1.1\r\nHost: evil.example\r\n{bearer}\r\n"),
            "403",
        ),
        (
            format!("POST /models/calm/stop HTTP/1.1\r\nHost: 10.0.0.1:{port}\r\n{bearer}\r\n"),
            "403",
        ),
        (
            format!("GET /models/calm HTTP/1.1\r\nHost: {host}\r\n{bearer}\r\n"),
            "200",
        ),
        (
            format!("GET /healthz HTTP/1.1\r\nHost: localhost:{port}\r\n{bearer}\r\n"),
            "200",
        ),
    ];
    for (request, code) in &cases {
        let answer = tcp_request(port, request);
        assert_eq!(status_code(&answer), *code, "{request:?}\n{answer}");
    }
    assert_eq!(s.model("calm")["state"], "running", "nothing was stopped");
    // With both, the owner's request does act.
    let answer = tcp_request(
        port,
        &format!("POST /models/calm/stop HTTP/1.1\r\nHost: {host}\r\n{bearer}\r\n"),
    );
    assert_eq!(status_code(&answer), "200", "{answer}");
    wait_until("the stop", Duration::from_secs(5), || {
        s.model("calm")["state"] == "stopped"
    });
    assert_eq!(s.stop().0, 0);
}

/// The Unix socket is the supervisor's user's (mode 0600); loosened by mistake, it still
/// answers another user 403 (peer credentials), and only that.
#[test]
fn another_user_gets_nothing_from_the_socket() {
    let mut s = Supervisor::start("stranger", MODELS);
    std::fs::set_permissions(&s.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({:?})\n\
         s.sendall(b'POST /models/calm/stop HTTP/1.1\\r\\nHost: cuvisor\\r\\n\\r\\n')\n\
         print(s.recv(100).split()[1].decode())\n",
        s.socket.display().to_string()
    );
    let out = run(std::process::Command::new("python3")
        .args(["-c", &script])
        .uid(65534)
        .gid(65534));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "403",
        "{}",
        stderr(&out)
    );
    assert_eq!(s.model("calm")["state"], "running");
    assert_eq!(s.stop().0, 0);
}

use std::os::unix::process::CommandExt;

/// Endless request lines (the old server grew to 2.1 GB on four of 512 MiB): the server
/// reads at most 8 KiB of a request's head, answers or closes, and stays small.
#[test]
fn endless_request_lines_are_cut_off_and_cost_nothing() {
    let (mut s, port, _token) = with_tcp("endless", MODELS);
    let rss_before = proc_status(s.pid(), "VmRSS:");
    let chunk = vec![b'A'; 64 * 1024];
    for attempt in 0..4 {
        let mut streams: Vec<Box<dyn ReadWrite>> = vec![
            Box::new(UnixStream::connect(&s.socket).unwrap()),
            Box::new(TcpStream::connect(("127.0.0.1", port)).unwrap()),
        ];
        for stream in &mut streams {
            stream.write_all(b"GET /").unwrap();
            let started = Instant::now();
            let mut sent = 0usize;
            while sent < 64 << 20 && stream.write_all(&chunk).is_ok() {
                sent += chunk.len();
            }
            assert!(
                sent < 64 << 20,
                "attempt {attempt}: the server took 64 MiB of one request line"
            );
            assert!(started.elapsed() < Duration::from_secs(10));
        }
    }
    let rss_after = proc_status(s.pid(), "VmRSS:");
    assert!(
        rss_after < rss_before + 16 * 1024,
        "the supervisor grew from {rss_before} to {rss_after} KiB"
    );
    // It still answers.
    let (code, _) = cuvisor::control::request(&s.socket, "GET", "/models").unwrap();
    assert_eq!(code, 200);
    assert_eq!(s.stop().0, 0);
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Idle connections by the thousand (the old server kept a thread for each, and past its
/// descriptors spun at 99% CPU, stopped answering and could not restart a crashed model):
/// excess connections are closed at once, idle ones after the header timeout; no thread
/// per connection; the owner is served over the socket and crashed models restart
/// throughout.
#[test]
fn a_flood_of_idle_connections_starves_nothing() {
    let (mut s, port, _token) = with_tcp("flood", MODELS);
    let pid = s.pid();
    let threads_before = proc_status(pid, "Threads:");
    let restarts_before = s.model("crashy")["restarts"].as_u64().unwrap();
    let flood: Vec<TcpStream> = (0..1100)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    assert!(flood.len() > 1000, "{} connections made", flood.len());
    // The supervisor holds a bounded number of them; no thread per connection.
    let fds = open_descriptors(pid);
    let threads = proc_status(pid, "Threads:");
    assert!(fds < 120, "{fds} descriptors open in the supervisor");
    assert!(
        threads <= threads_before + 2,
        "{threads} threads (from {threads_before})"
    );
    // The owner is served at once over the socket, and a crashed model keeps restarting.
    let started = Instant::now();
    let (code, _) = cuvisor::control::request(&s.socket, "GET", "/models").unwrap();
    assert_eq!(code, 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    wait_until("restarts during the flood", Duration::from_secs(5), || {
        s.model("crashy")["restarts"].as_u64().unwrap() >= restarts_before + 3
    });
    // The idle connections the server took are closed after the header timeout (5 s);
    // the others were closed at once.
    let closed_by = Instant::now() + Duration::from_secs(8);
    for mut stream in flood {
        let left = closed_by
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10));
        stream.set_read_timeout(Some(left)).unwrap();
        // To its end: an answer (408) or nothing, then end of file or a reset.
        let mut rest = Vec::new();
        if let Err(e) = stream.read_to_end(&mut rest) {
            assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "a connection still open after the header timeout: {e}"
            );
        }
    }
    assert!(open_descriptors(pid) < fds.max(60));
    // And a TCP client is served again.
    let answer = tcp_request(
        port,
        &format!(
            "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        ),
    );
    assert_eq!(status_code(&answer), "200", "{answer}");
    assert_eq!(s.stop().0, 0);
}

/// `listen` without a token file, or with one other users can read, is refused by
/// `check`.
#[test]
fn a_tcp_listener_needs_a_private_token_file() {
    let dir = TempDir::new("token-check");
    let token = dir.path("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let check = |settings: &str| check_settings(&dir, settings);
    let (code, err) = check("listen = \"127.0.0.1:9400\"");
    assert_eq!(code, Some(1));
    assert!(
        err.contains("FILE:2: listen: the control API over TCP needs listen_token"),
        "{err}"
    );
    let (code, err) = check(&format!(
        "listen = \"127.0.0.1:9400\"\nlisten_token = \"{}\"",
        token.display()
    ));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("other users can read it (mode 0644): chmod 600"),
        "{err}"
    );
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, err) = check(&format!(
        "listen = \"127.0.0.1:9400\"\nlisten_token = \"{}\"",
        token.display()
    ));
    assert_eq!(code, Some(0), "{err}");
}
