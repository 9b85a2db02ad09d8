//! The front door's cost, for docs/BENCHMARKS.md: `cargo run --release --example bench_gateway`.
//!
//! One upstream (this program in `--upstream PORT` mode: a small hyper server answering a
//! 200-byte JSON completion, and a streamed answer whose first chunk is written at once
//! and the rest 20 ms later) is reached three ways in one run:
//!
//! 1. directly;
//! 2. through cuvisor's front door (`cuvisor run` with `http`, the upstream as its model's
//!    instance);
//! 3. through nginx as a reverse proxy with upstream keep-alive (Debian's `nginx`; the
//!    column is skipped, and says so, where nginx is not installed).
//!
//! For each: p50 and p99 latency and requests per second at concurrency 1 and 64
//! (keep-alive connections, 3 s each after 0.5 s of warm-up), the CPU time the serving
//! side spends per request (the upstream itself for the direct row; the front-door thread
//! of the supervisor, or nginx's worker process: the proxy alone), and the median time to
//! the first byte of a streamed answer (200 sequential requests). Requests per second
//! depend on how the machine's cores are shared between the load generator, the upstream
//! and the proxy; CPU per request says what the proxy costs whatever the sharing.
//!
//! Then the cold start: a second model, scaled to zero, is asked for a completion 10
//! times, each time after it has scaled back to zero. Its instance notes (CLOCK_MONOTONIC,
//! shared by all processes) when it first answers its health check with 200; the client
//! notes when the answer's first byte arrives. Their difference is what the front door
//! adds once the instance is ready.

#[path = "support/supervise.rs"]
mod supervise;
mod support;
use supervise::{spawn_supervisor, supervise_if_asked};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Frame};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::path::Path;
use std::time::{Duration, Instant};

const COMPLETION: &str = r#"{"object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hello from the benchmark upstream, forty bytes"}}],"usage":{"total_tokens":12}}"#;

fn main() {
    supervise_if_asked();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--upstream") {
        upstream(args[2].parse().expect("a port"));
        return;
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build measures unoptimized code; use --release");
    }
    let dir = std::env::temp_dir().join(format!("cuvisor-bench-gateway-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a work directory");
    // 1. The upstream, reached directly.
    let direct_port = free_port();
    let mut direct = std::process::Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--upstream", &direct_port.to_string()])
        .spawn()
        .expect("the upstream");
    // 2. cuvisor's front door, with the same program as its model.
    let front_port = free_port();
    let config = dir.join("cuvisor.toml");
    std::fs::write(
        &config,
        format!(
            "[supervisor]\nsocket = \"{dir}/control.sock\"\nledger_dir = \"{dir}/ledgers\"\n\
             cgroup_name = \"bench-gateway\"\nallow_unlimited = true\nhttp = \"127.0.0.1:{front_port}\"\n\
             [[model]]\nname = \"m\"\ncommand = \"{exe}\"\nargs = [\"--upstream\", \"{{port}}\"]\nmode = \"off\"\n\
             isolation = {{ pid = false, mount = false, ipc = false, uts = false }}\n\
             [model.serve]\nhealth = \"/health\"\nconcurrency = 256\n\
             [[model]]\nname = \"cold\"\ncommand = \"{exe}\"\nargs = [\"--upstream\", \"{{port}}\"]\nmode = \"off\"\n\
             min_instances = 0\nmax_instances = 1\nenv = {{ BENCH_HEALTH_LOG = \"{dir}/health\" }}\n\
             isolation = {{ pid = false, mount = false, ipc = false, uts = false }}\n\
             [model.serve]\nhealth = \"/health\"\nidle_timeout = \"100ms\"\n",
            dir = dir.display(),
            exe = std::env::current_exe().expect("current_exe").display()
        ),
    )
    .expect("the configuration");
    let mut supervisor = spawn_supervisor(
        &config,
        std::fs::File::create(dir.join("supervisor.log")).expect("a log"),
    );
    // 3. nginx, if installed.
    let nginx_port = free_port();
    let mut nginx = start_nginx(&dir, nginx_port, direct_port);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        for port in [direct_port, front_port] {
            wait_ready(port).await;
        }
        if nginx.is_some() {
            wait_ready(nginx_port).await;
        }
        let front_door = front_door_thread(supervisor.id());
        let mut targets = vec![
            ("direct", direct_port, Some(stat_path(direct.id(), None))),
            ("cuvisor", front_port, front_door),
        ];
        match &nginx {
            Some(n) => targets.push(("nginx", nginx_port, nginx_worker(n.id()))),
            None => {
                println!("nginx is not installed: its column is left out (apt-get install nginx)\n")
            }
        }
        println!(
            "| through | concurrency | p50 (µs) | p99 (µs) | requests/s | serving CPU per request (µs) |"
        );
        println!("|---|---|---|---|---|---|");
        for concurrency in [1usize, 64] {
            for (name, port, serving) in &targets {
                let before = serving.as_deref().and_then(cpu_seconds);
                let (p50, p99, rps, requests) = load(*port, concurrency).await;
                let after = serving.as_deref().and_then(cpu_seconds);
                let cpu = match (before, after) {
                    (Some(b), Some(a)) => format!("{:.1}", (a - b) / requests as f64 * 1e6),
                    _ => "-".into(),
                };
                println!("| {name} | {concurrency} | {p50:.0} | {p99:.0} | {rps:.0} | {cpu} |");
            }
        }
        println!("\n| through | time to first byte of a streamed answer, median of 200 (µs) |");
        println!("|---|---|");
        for (name, port, _) in &targets {
            println!("| {name} | {:.0} |", first_byte(*port).await);
        }
        cold_starts(front_port, &dir).await;
    });
    if let Some(n) = nginx.as_mut() {
        // SIGTERM, not SIGKILL: nginx's master stops its workers first (killed, it would
        // leave them running, holding the port and this program's output).
        // SAFETY: kill(2) of the nginx this program started and has not waited for.
        unsafe { libc::kill(n.id() as i32, libc::SIGTERM) };
        let _ = n.wait();
    }
    let _ = direct.kill();
    let _ = direct.wait();
    // SAFETY: kill(2) of the supervisor this program started.
    unsafe { libc::kill(supervisor.id() as i32, libc::SIGTERM) };
    let _ = supervisor.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start_nginx(dir: &Path, port: u16, upstream: u16) -> Option<std::process::Child> {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let conf = dir.join("nginx.conf");
    // Its temporary files in a directory of their own: nginx gives them to its worker's
    // user, and the work directory (the ledgers' parent) must stay root's.
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx.err;\ndaemon off;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n access_log off;\n client_body_temp_path {dir}/nginx-temp;\n proxy_temp_path {dir}/nginx-temp;\n\
             upstream up {{ server 127.0.0.1:{upstream}; keepalive 64; }}\n\
             server {{ listen 127.0.0.1:{port};\n  location / {{ proxy_pass http://up; proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\"; proxy_buffering off; }} }}\n}}\n",
            dir = dir.display()
        ),
    )
    .ok()?;
    std::process::Command::new(nginx)
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

fn client() -> Client {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector)
}

fn completion(port: u16, path: &str) -> Request<Full<Bytes>> {
    completion_of("m", port, path)
}

fn completion_of(model: &str, port: u16, path: &str) -> Request<Full<Bytes>> {
    Request::post(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!(
            r#"{{"model": "{model}", "prompt": "hi"}}"#
        ))))
        .expect("a request")
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process of the machine.
fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Ten cold starts of the scaled-to-zero model `cold`: for each, the whole wait for the
/// first byte, and the time from its instance's first health answer of 200 to that byte.
async fn cold_starts(port: u16, dir: &Path) {
    let health = dir.join("health");
    let socket = dir.join("control.sock");
    let client = client();
    let (mut total, mut after_health) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        // Back at zero: no instance of `cold` runs.
        for _ in 0..200 {
            let status = cuvisor::control::request(&socket, "GET", "/models/cold")
                .ok()
                .and_then(|(_, body)| {
                    serde_json::from_str::<cuvisor::status::ModelStatus>(&body).ok()
                });
            if status.is_some_and(|s| s.instances.iter().all(|i| i.pid.is_none())) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = std::fs::remove_file(&health);
        let start = monotonic_ns();
        let answer = client
            .request(completion_of("cold", port, "/v1/completions"))
            .await
            .expect("an answer");
        let mut body = answer.into_body();
        body.frame().await.expect("a first frame").expect("a frame");
        let first_byte = monotonic_ns();
        while body.frame().await.is_some() {}
        let ready: u64 = std::fs::read_to_string(&health)
            .expect("the instance noted its first health answer")
            .trim()
            .parse()
            .expect("nanoseconds");
        total.push((first_byte - start) as f64 / 1e6);
        after_health.push((first_byte.saturating_sub(ready)) as f64 / 1e6);
    }
    for v in [&mut total, &mut after_health] {
        v.sort_by(f64::total_cmp);
    }
    println!("\n| cold start of a scaled-to-zero model, 10 times | median (ms) | max (ms) |");
    println!("|---|---|---|");
    println!(
        "| request to first byte (the worker's start included) | {:.1} | {:.1} |",
        total[total.len() / 2],
        total[total.len() - 1]
    );
    println!(
        "| first health 200 to first byte | {:.2} | {:.2} |",
        after_health[after_health.len() / 2],
        after_health[after_health.len() - 1]
    );
}

async fn wait_ready(port: u16) {
    let client = client();
    for _ in 0..600 {
        if let Ok(r) = client.request(completion(port, "/v1/completions")).await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing answers on port {port}");
}

/// `/proc/PID/stat`, or a thread's `/proc/PID/task/TID/stat`.
fn stat_path(pid: u32, tid: Option<u32>) -> std::path::PathBuf {
    match tid {
        Some(tid) => format!("/proc/{pid}/task/{tid}/stat").into(),
        None => format!("/proc/{pid}/stat").into(),
    }
}

/// The supervisor's front-door thread (named so), once it runs.
fn front_door_thread(supervisor: u32) -> Option<std::path::PathBuf> {
    let tasks = std::fs::read_dir(format!("/proc/{supervisor}/task")).ok()?;
    tasks.flatten().find_map(|t| {
        let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
        let tid = t.file_name().to_str()?.parse().ok()?;
        (comm.trim() == "front-door").then(|| stat_path(supervisor, Some(tid)))
    })
}

/// nginx's worker: the child of its master process.
fn nginx_worker(master: u32) -> Option<std::path::PathBuf> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|p| {
        let pid: u32 = p.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(p.path().join("stat")).ok()?;
        let ppid: u32 = cuvisor::ledger::stat_field(&stat, 4)?.parse().ok()?;
        (ppid == master).then(|| stat_path(pid, None))
    })
}

/// User and system CPU time of a process or thread so far, in seconds (`stat` fields 14
/// and 15, in clock ticks).
fn cpu_seconds(stat: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(stat).ok()?;
    let field = |n| -> Option<u64> { cuvisor::ledger::stat_field(&text, n)?.parse().ok() };
    let (user, system) = (field(14)?, field(15)?);
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some((user + system) as f64 / ticks as f64)
}

/// (p50 µs, p99 µs, requests per second, every request sent, warm-up included) with
/// `concurrency` keep-alive clients.
async fn load(port: u16, concurrency: usize) -> (f64, f64, f64, usize) {
    let run = |seconds: f64| async move {
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                tokio::spawn(async move {
                    let client = client();
                    let mut latencies = Vec::new();
                    while Instant::now() < deadline {
                        let start = Instant::now();
                        let answer = client.request(completion(port, "/v1/completions")).await;
                        let body = match answer {
                            Ok(r) => r.into_body().collect().await.map(|b| b.to_bytes().len()),
                            Err(_) => Ok(0),
                        };
                        assert!(body.is_ok_and(|n| n > 0), "a failed request on port {port}");
                        latencies.push(start.elapsed().as_secs_f64() * 1e6);
                    }
                    latencies
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("a load task"));
        }
        all
    };
    let warm_up = run(0.5).await.len();
    let mut all = run(3.0).await;
    all.sort_by(f64::total_cmp);
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    (
        at(0.5),
        at(0.99),
        all.len() as f64 / 3.0,
        warm_up + all.len(),
    )
}

/// Median time to the first body byte of a streamed answer, µs.
async fn first_byte(port: u16) -> f64 {
    let client = client();
    let mut times = Vec::new();
    for _ in 0..200 {
        let start = Instant::now();
        let answer = client
            .request(completion(port, "/v1/chat/completions"))
            .await
            .expect("an answer");
        let mut body = answer.into_body();
        let first = body.frame().await.expect("a first frame").expect("a frame");
        assert!(first.is_data());
        times.push(start.elapsed().as_secs_f64() * 1e6);
        while body.frame().await.is_some() {}
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// The upstream: `/health`, a JSON completion, and a streamed answer.
fn upstream(port: u16) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("the upstream's port");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|request: Request<hyper::body::Incoming>| async move {
                    type Body =
                        http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;
                    let response: Response<Body> = match request.uri().path() {
                        "/v1/chat/completions" => {
                            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
                            tokio::spawn(async move {
                                let _ = tx
                                    .send(Bytes::from_static(b"data: {\"first\": true}\n\n"))
                                    .await;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
                            });
                            Response::builder()
                                .header("content-type", "text/event-stream")
                                .body(ChannelBody(rx).boxed())
                                .expect("a response")
                        }
                        "/health" => {
                            note_first_health();
                            Response::new(Full::new(Bytes::from_static(b"ok")).boxed())
                        }
                        _ => Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(COMPLETION.as_bytes())).boxed())
                            .expect("a response"),
                    };
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// Where BENCH_HEALTH_LOG says: the time of this upstream's first health answer.
fn note_first_health() {
    static NOTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Some(path) = std::env::var_os("BENCH_HEALTH_LOG")
        && !NOTED.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        let _ = std::fs::write(path, monotonic_ns().to_string());
    }
}

/// A body whose chunks come from a channel, as they are sent.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}
