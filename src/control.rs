//! The control API: HTTP/1.1 on a Unix socket (and, if configured, on a loopback TCP
//! port). Requests are handed to the supervisor's thread and answered from there.
//!
//! | request | answer |
//! |---|---|
//! | `GET /models` | every model's status (JSON) |
//! | `GET /models/NAME` | one model's status |
//! | `POST /models/NAME/start`, `/stop`, `/restart` | act on every instance of the model |
//! | `GET /metrics` | OpenMetrics text |
//! | `GET /healthz` | `ok` |

use crate::config::SupervisorConfig;
use crate::size::format_bytes;
use crate::supervisor::{Event, Reply, Request};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Sender, channel};
use std::time::Duration;

/// The listening control API; the socket file goes when this is dropped.
pub struct Server {
    socket: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

pub fn serve(cfg: &SupervisorConfig, tx: Sender<Event>) -> Result<Server, String> {
    let path = &cfg.socket;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            format!(
                "control socket {}: cannot create its directory: {e}",
                path.display()
            )
        })?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(format!(
                "control socket {}: in use by a running supervisor",
                path.display()
            ));
        }
        std::fs::remove_file(path).map_err(|e| {
            format!(
                "control socket {}: stale, and cannot be removed: {e}",
                path.display()
            )
        })?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("control socket {}: cannot listen: {e}", path.display()))?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    let unix_tx = tx.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let tx = unix_tx.clone();
            std::thread::spawn(move || answer(stream, &tx));
        }
    });
    if let Some(addr) = cfg.listen {
        let tcp = TcpListener::bind(addr)
            .map_err(|e| format!("control API {addr}: cannot listen: {e}"))?;
        std::thread::spawn(move || {
            for stream in tcp.incoming().flatten() {
                let tx = tx.clone();
                std::thread::spawn(move || answer(stream, &tx));
            }
        });
    }
    Ok(Server {
        socket: path.clone(),
    })
}

fn answer<S: Read + Write>(stream: S, tx: &Sender<Event>) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // Skip the headers; no request of this API has a body.
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
        header.clear();
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let request = match (method, segments.as_slice()) {
        ("GET", ["healthz"]) => Err(Reply {
            code: 200,
            content_type: "text/plain",
            body: "ok\n".into(),
        }),
        ("GET", ["models"]) => Ok(Request::Status(None)),
        ("GET", ["models", name]) => Ok(Request::Status(Some(name.to_string()))),
        ("GET", ["metrics"]) => Ok(Request::Metrics),
        ("POST", ["models", name, "start"]) => Ok(Request::Start(name.to_string())),
        ("POST", ["models", name, "stop"]) => Ok(Request::Stop(name.to_string())),
        ("POST", ["models", name, "restart"]) => Ok(Request::Restart(name.to_string())),
        (_, ["healthz" | "models" | "metrics", ..]) => Err(Reply {
            code: 405,
            content_type: "text/plain",
            body: "method not allowed\n".into(),
        }),
        _ => Err(Reply {
            code: 404,
            content_type: "text/plain",
            body: "not found\n".into(),
        }),
    };
    let reply = match request {
        Err(direct) => direct,
        Ok(request) => {
            let (reply_tx, reply_rx) = channel();
            let _ = tx.send(Event::Control(request, reply_tx));
            reply_rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or(Reply {
                    code: 503,
                    content_type: "text/plain",
                    body: "the supervisor did not answer\n".into(),
                })
        }
    };
    let reason = match reply.code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut stream = reader.into_inner();
    let _ = write!(
        stream,
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        reply.code,
        reply.content_type,
        reply.body.len(),
        reply.body
    );
}

/// One request to a supervisor's control socket: (HTTP status, body).
pub fn request(socket: &Path, method: &str, path: &str) -> Result<(u16, String), String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "control socket {}: {e} (is `cuvisor run` running?)",
            socket.display()
        )
    })?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(15)));
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: cuvisor\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("a malformed answer")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("a malformed status line")?;
    Ok((code, body.to_owned()))
}

/// GPU memory used of what the quota allows: the quota holds on each GPU, so a model on
/// several GPUs shows its total against `N×QUOTA` (`6.0 GiB / 2×3.0 GiB`).
fn used_of_quota(m: &serde_json::Value) -> String {
    let bytes = |v: &serde_json::Value| v.as_u64().map_or("-".to_owned(), format_bytes);
    let gpus = m["gpus"].as_array().map_or(0, Vec::len);
    let quota = match (gpus, &m["gpu_quota_bytes"]) {
        (2.., q) if q.is_u64() => format!("{gpus}×{}", bytes(q)),
        (_, q) => bytes(q),
    };
    format!("{} / {quota}", bytes(&m["gpu_used_bytes"]))
}

/// The table `cuvisor status` prints, from the JSON of `GET /models`.
pub fn status_table(status: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{:<20} {:<9} {:>9} {:>8} {:>4} {:>21} {:>10} {:>10}  PIDS\n",
        "MODEL",
        "STATE",
        "INSTANCES",
        "RESTARTS",
        "OOM",
        "GPU USED / QUOTA",
        "GPU PEAK",
        "HOST MEM"
    );
    for m in status["models"].as_array().into_iter().flatten() {
        let instances = m["instances"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let pids: Vec<String> = instances
            .iter()
            .filter_map(|i| i["pid"].as_i64())
            .map(|p| p.to_string())
            .collect();
        let bytes = |k: &str| m[k].as_u64().map_or("-".to_owned(), format_bytes);
        let _ = writeln!(
            out,
            "{:<20} {:<9} {:>9} {:>8} {:>4} {:>21} {:>10} {:>10}  {}",
            m["name"].as_str().unwrap_or("?"),
            m["state"].as_str().unwrap_or("?"),
            format!("{}/{}", pids.len(), instances.len()),
            m["restarts"].to_string(),
            m["oom_kills"].to_string(),
            used_of_quota(m),
            bytes("gpu_peak_bytes"),
            bytes("host_memory_bytes"),
            pids.join(",")
        );
        // One line per GPU the model uses: the quota holds on each.
        for g in m["gpus"].as_array().into_iter().flatten() {
            let bytes = |k: &str| g[k].as_u64().map_or("-".to_owned(), format_bytes);
            let _ = writeln!(
                out,
                "  {:<53} {:>21} {:>10}",
                g["uuid"].as_str().unwrap_or("?"),
                format!("{} / {}", bytes("used_bytes"), bytes("quota_bytes")),
                bytes("peak_bytes"),
            );
        }
        if let Some(e) = m["error"].as_str() {
            let _ = writeln!(out, "  error: {e}");
        }
        for i in instances {
            if let Some(e) = i["error"].as_str() {
                let _ = writeln!(out, "  instance {}: {e}", i["index"]);
            }
        }
    }
    out
}
