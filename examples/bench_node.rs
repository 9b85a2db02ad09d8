//! Omni's headline on the fake GPU:
//! `cargo run --release --example bench_node [-- --seconds N] [--zipf S] [--protect D]
//! [--patience D] [--hibernate-after D|off]` (`--protect` and `--patience` set the 80 GiB
//! node's `swap_protect` and `swap_patience`, e.g. `0s` to run it without hysteresis or
//! collation; `--hibernate-after` its models' `hibernate_after`, `5s` unless given).
//!
//! One supervisor (embedded, in a child process) on a fake 80 GiB GPU whose link to the
//! host moves 25 GB/s (`FAKE_CUDA_LINK_GBPS`, PCIe 4.0 x16), serving 13 models whose
//! quotas add up to 320 GiB, 4× the device: three embedding models (2–6 GiB), four small
//! chat models (12–24 GiB), six large ones (36–40 GiB). Each is the test model server
//! (`tests/servers/openai_model.py`) that allocates its whole quota through the CUDA driver
//! at load, as an engine does, and answers after a class's compute time (10, 40, 120 ms).
//! Its pages are never touched, so they cost this machine nothing.
//!
//! The traffic is open-loop and the same in both runs (a fixed seed): Poisson arrivals at
//! 8 requests/s, with a burst of three times that for 3 s every 15 s; the model of each
//! request drawn from a Zipf law (s = 1.2) over the 13, whose ranking shifts by four
//! places at each third of the run (which models are hot changes, as over a day); 2 % of
//! them are long streams (20 chunks, 0.1 s apart).
//!
//! The same traffic goes to the ideal node (a 1 TiB GPU: every model always resident)
//! and to the 80 GiB one. Reported, per class and for warm requests (an instance of their
//! model was ready when they came) and woken ones (it was hibernated), as the front door's
//! `Server-Timing` header says: p50, p99 and p99.9
//! latency, and the warm p99's ratio to the ideal; requests per second; requests refused
//! (not 200); hibernates and wakes per minute and GiB moved (the supervisor's log); the
//! time swaps took (its `cuvisor_swap_seconds`); the woken requests' added latency (over
//! the ideal's median) against the swap's bytes over the link; and the most the GPU held
//! resident (NVML, outside every model) against its 80 GiB. A picture is written to
//! `target/bench_node.png`: latency over time (warm grey, woken red), and the GPU's
//! resident bytes over time with each model's quota while it was awake.

#[path = "support/supervise.rs"]
mod supervise;
mod support;
use supervise::{spawn_supervisor, supervise_if_asked};

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;
const DEVICE_GIB: u64 = 80;
const LINK_GBPS: f64 = 25.0;

/// (name, GiB, class)
const MODELS: [(&str, u64, Class); 13] = [
    ("embed-a", 2, Class::Embed),
    ("embed-b", 4, Class::Embed),
    ("embed-c", 6, Class::Embed),
    ("small-a", 12, Class::Small),
    ("small-b", 16, Class::Small),
    ("small-c", 20, Class::Small),
    ("small-d", 24, Class::Small),
    ("large-a", 36, Class::Large),
    ("large-b", 40, Class::Large),
    ("large-c", 40, Class::Large),
    ("large-d", 40, Class::Large),
    ("large-e", 40, Class::Large),
    ("large-f", 40, Class::Large),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Embed,
    Small,
    Large,
}

impl Class {
    fn work_ms(self) -> u64 {
        match self {
            Class::Embed => 10,
            Class::Small => 40,
            Class::Large => 120,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Class::Embed => "embedding",
            Class::Small => "small chat",
            Class::Large => "large chat",
        }
    }
}

/// One request of the schedule: when (from the start), which model, streamed or not.
#[derive(Debug, Clone, Copy)]
struct Planned {
    at: Duration,
    model: usize,
    stream: bool,
}

/// What happened to it.
#[derive(Debug, Clone, Copy)]
struct Done {
    planned: Planned,
    latency: Duration,
    ok: bool,
    /// What it found when it came, and how long it waited for an instance, by the front
    /// door's `Server-Timing` header.
    found: Found,
    queued: Duration,
}

/// What a request found of its model: an instance ready, the model hibernated, or no
/// instance ready (a start); unknown without an answer from an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Ready,
    Wake,
    Start,
    Unknown,
}

/// xorshift64*: the same traffic in every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The traffic of `seconds` seconds, its models drawn from a Zipf law of exponent `zipf`.
fn schedule(seconds: u64, zipf: f64) -> Vec<Planned> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let weights: Vec<f64> = (1..=MODELS.len())
        .map(|k| 1.0 / (k as f64).powf(zipf))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut out = Vec::new();
    let mut t = 0.0;
    let end = seconds as f64;
    while t < end {
        let burst = (t % 15.0) < 3.0;
        let rate = if burst { 24.0 } else { 8.0 };
        t += -(1.0 - rng.next()).ln() / rate;
        if t >= end {
            break;
        }
        // The hot set shifts by four ranks at each third of the run.
        let phase = ((t / end) * 3.0) as usize;
        let mut pick = rng.next() * total;
        let mut rank = 0;
        while rank + 1 < weights.len() && pick > weights[rank] {
            pick -= weights[rank];
            rank += 1;
        }
        // Ranks to models: a fixed shuffle, shifted by the phase.
        let model = (rank * 5 + phase * 4) % MODELS.len();
        out.push(Planned {
            at: Duration::from_secs_f64(t),
            model,
            stream: rng.next() < 0.02,
        });
    }
    out
}

struct Node {
    dir: PathBuf,
    http: u16,
    socket: PathBuf,
    child: std::process::Child,
    state: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child, not yet waited for.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn stubs() -> PathBuf {
    PathBuf::from(env!("CUDA_STUB_DIR"))
}

/// The knobs of a run, from the command line.
struct Options {
    seconds: u64,
    /// The Zipf exponent of the models' popularity (`--zipf`, 1.2).
    zipf: f64,
    /// `[supervisor]` lines for the 80 GiB node (`--protect` and `--patience`: its
    /// `swap_protect` and `swap_patience`, the supervisor's defaults if not given).
    policy: String,
    /// Its models' `serve.hibernate_after` (`--hibernate-after`, `5s`; `off`: none, they
    /// hibernate only when pushed out for another).
    hibernate_after: Option<String>,
}

impl Options {
    fn parse() -> Options {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let value = |flag: &str| -> Option<&str> {
            let at = args.iter().position(|a| a == flag)?;
            Some(args.get(at + 1).map(String::as_str).unwrap_or_else(|| {
                panic!("{flag} needs a value");
            }))
        };
        let number = |flag: &str, default: f64| -> f64 {
            value(flag).map_or(default, |v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{flag} {v}: expected a number"))
            })
        };
        let mut policy = String::new();
        for (flag, key) in [
            ("--protect", "swap_protect"),
            ("--patience", "swap_patience"),
        ] {
            if let Some(v) = value(flag) {
                policy += &format!("{key} = \"{v}\"\n");
            }
        }
        Options {
            seconds: number("--seconds", 90.0) as u64,
            zipf: number("--zipf", 1.2),
            policy,
            hibernate_after: match value("--hibernate-after").unwrap_or("5s") {
                "off" => None,
                d => Some(d.to_owned()),
            },
        }
    }
}

/// A supervisor serving the 13 models on a fake GPU of `device_gib`, with `policy`
/// (`[supervisor]` lines) and each model's `hibernate_after`.
fn start(tag: &str, device_gib: u64, policy: &str, hibernate_after: Option<&str>) -> Node {
    let dir = support::bench_dir(&format!("node-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a work directory");
    let (http, socket) = (free_port(), dir.join("control.sock"));
    let server = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers/openai_model.py");
    let mut config = format!(
        "[supervisor]\nsocket = \"{}\"\nledger_dir = \"{}\"\nlogs = \"{}\"\n\
         cgroup_name = \"cuvisor-bench-node-{}\"\nhttp = \"127.0.0.1:{http}\"\n\
         grace_period = \"2s\"\nhttp_max_connections = 512\n{policy}",
        socket.display(),
        dir.join("ledgers").display(),
        dir.join("logs").display(),
        std::process::id(),
    );
    for (name, gib, class) in MODELS {
        config += &format!(
            "[[model]]\nname = \"{name}\"\ncommand = \"python3\"\n\
             args = [\"{}\", \"--port\", \"{{port}}\", \"--name\", \"{name}\", \"--gpu-bytes\", \"{}\", \"--work-ms\", \"{}\"]\n\
             env = {{ LD_LIBRARY_PATH = \"{}\" }}\ngpu_quota = \"{gib}GiB\"\n\
             [model.serve]\nhealth = \"/health\"\nready_timeout = \"5m\"\nconcurrency = 16\n\
             max_queue = 1024\nqueue_timeout = \"5m\"\n{}",
            server.display(),
            gib * GIB,
            class.work_ms(),
            stubs().display(),
            hibernate_after.map_or(String::new(), |d| format!("hibernate_after = \"{d}\"\n")),
        );
    }
    let path = dir.join("cuvisor.toml");
    std::fs::write(&path, config).expect("the configuration");
    let state = dir.join("gpu-state");
    // The fake node: its workers inherit it.
    // SAFETY: set before any thread of this process reads the environment concurrently
    // (the supervisor's child is started right after, the traffic's threads later).
    unsafe {
        std::env::set_var("FAKE_CUDA_DEVICE_MEM", format!("{device_gib}GiB"));
        std::env::set_var("FAKE_CUDA_STATE", &state);
        std::env::set_var("FAKE_CUDA_LINK_GBPS", LINK_GBPS.to_string());
        std::env::set_var("LD_LIBRARY_PATH", stubs());
    }
    let log = std::fs::File::create(dir.join("supervisor.log")).expect("a log");
    let child = spawn_supervisor(&path, log);
    let node = Node {
        dir,
        http,
        socket,
        child,
        state,
    };
    // Every model loaded (its quota allocated), ready or hibernated.
    let end = Instant::now() + Duration::from_secs(600);
    loop {
        let ready = cuvisor::control::request(&node.socket, "GET", "/models")
            .ok()
            .and_then(|(code, body)| (code == 200).then_some(body))
            .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
            .is_some_and(|s| {
                s["models"].as_array().is_some_and(|m| {
                    m.len() == MODELS.len()
                        && m.iter().all(|m| {
                            // Loaded: ready, or already hibernated to fit the GPU.
                            let state = &m["instances"][0]["state"];
                            state == "ready" || state == "hibernated"
                        })
                })
            });
        if ready {
            break;
        }
        assert!(Instant::now() < end, "the models did not all load");
        std::thread::sleep(Duration::from_millis(200));
    }
    node
}

/// One request through the front door: whether its answer was whole and 200, what it
/// found and how long it waited for an instance (its `Server-Timing` header).
fn request(port: u16, model: &str, stream: bool) -> (bool, Found, Duration) {
    let body = if stream {
        format!(r#"{{"model": "{model}", "stream": true, "chunks": 20, "interval": 0.1}}"#)
    } else {
        format!(r#"{{"model": "{model}"}}"#)
    };
    let ask = || -> std::io::Result<(bool, Found, Duration)> {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
        write!(
            c,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut answer = Vec::new();
        c.read_to_end(&mut answer)?;
        let head = String::from_utf8_lossy(&answer[..answer.len().min(4096)]).to_lowercase();
        let (found, queued) = server_timing(head.split("\r\n\r\n").next().unwrap_or_default());
        Ok((answer.starts_with(b"HTTP/1.1 200 "), found, queued))
    };
    ask().unwrap_or((false, Found::Unknown, Duration::ZERO))
}

/// The front door's `server-timing: cuvisor-queue;dur=MS;desc="FOUND"` in a head.
fn server_timing(head: &str) -> (Found, Duration) {
    let Some(value) = head
        .lines()
        .find_map(|l| l.strip_prefix("server-timing: cuvisor-queue;dur="))
    else {
        return (Found::Unknown, Duration::ZERO);
    };
    let (ms, desc) = value.split_once(';').unwrap_or((value, ""));
    let found = match desc.trim() {
        "desc=\"ready\"" => Found::Ready,
        "desc=\"wake\"" => Found::Wake,
        "desc=\"start\"" => Found::Start,
        _ => Found::Unknown,
    };
    let queued = ms.parse::<f64>().map_or(Duration::ZERO, |ms| {
        Duration::from_secs_f64(ms.max(0.0) / 1000.0)
    });
    (found, queued)
}

/// What a run measured.
struct Run {
    done: Vec<Done>,
    wall: Duration,
    /// (seconds from the start, the GPU's resident bytes, each model's quota while awake).
    samples: Vec<(f64, u64, Vec<u64>)>,
    swaps_in: u64,
    swaps_out: u64,
    swap_seconds: f64,
    moved_bytes: u64,
}

/// The GPU's resident bytes, as NVML outside every model reports them.
fn resident(state: &Path) -> Option<u64> {
    let out = std::process::Command::new(stubs().join("driver_probe"))
        .args(["nvml-info", "0"])
        .env("FAKE_CUDA_STATE", state)
        .env_remove("LD_PRELOAD")
        .env_remove("FAKE_CUDA_LINK_GBPS")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = text
        .lines()
        .next()?
        .strip_prefix("nvml-info 0 -> 0 ")?
        .split(' ')
        .collect();
    fields.get(2)?.parse().ok()
}

/// Which models are hibernated now (or being woken), by the supervisor's status.
fn asleep(socket: &Path) -> Option<Vec<bool>> {
    let (_, body) = cuvisor::control::request(socket, "GET", "/models").ok()?;
    let status: serde_json::Value = serde_json::from_str(&body).ok()?;
    let models = status["models"].as_array()?;
    Some(
        MODELS
            .iter()
            .map(|(name, ..)| {
                models
                    .iter()
                    .find(|m| m["name"] == *name)
                    .is_some_and(|m| m["swap"]["hibernated"] == true)
            })
            .collect(),
    )
}

fn drive(node: &Node, plan: &[Planned]) -> Run {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start = Instant::now();
    // The monitor: the GPU's resident bytes, and which models are awake.
    let monitor = {
        let stop = stop.clone();
        let (socket, state) = (node.socket.clone(), node.state.clone());
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let (Some(now), Some(r)) = (asleep(&socket), resident(&state)) {
                    let awake: Vec<u64> = MODELS
                        .iter()
                        .zip(&now)
                        .map(|((_, gib, _), asleep)| if *asleep { 0 } else { gib * GIB })
                        .collect();
                    samples.push((start.elapsed().as_secs_f64(), r, awake));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            samples
        })
    };
    let (tx, rx) = std::sync::mpsc::channel::<Planned>();
    let rx = Arc::new(Mutex::new(rx));
    let done = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..96)
        .map(|_| {
            let (rx, done) = (rx.clone(), done.clone());
            let port = node.http;
            std::thread::spawn(move || {
                loop {
                    let Ok(p) = rx.lock().unwrap().recv() else {
                        return;
                    };
                    let (ok, found, queued) = request(port, MODELS[p.model].0, p.stream);
                    let latency = start.elapsed().saturating_sub(p.at);
                    done.lock().unwrap().push(Done {
                        planned: p,
                        latency,
                        ok,
                        found,
                        queued,
                    });
                }
            })
        })
        .collect();
    for p in plan {
        if let Some(wait) = p.at.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        tx.send(*p).expect("the workers");
    }
    drop(tx);
    for w in workers {
        let _ = w.join();
    }
    let wall = start.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = monitor.join().unwrap_or_default();
    let done = std::mem::take(&mut *done.lock().unwrap());
    // The swaps, from the metrics and the supervisor's log.
    let metrics = cuvisor::control::request(&node.socket, "GET", "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let sum = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let log = std::fs::read_to_string(node.dir.join("supervisor.log")).unwrap_or_default();
    Run {
        done,
        wall,
        samples,
        swaps_in: count_swaps(&metrics, "in"),
        swaps_out: count_swaps(&metrics, "out"),
        swap_seconds: sum("cuvisor_swap_seconds_sum{"),
        moved_bytes: moved(&log),
    }
}

/// Hibernates (`out`) or wakes (`in`) every process acknowledged.
fn count_swaps(metrics: &str, direction: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("cuvisor_swap_seconds_count{")
                && l.contains(&format!("direction=\"{direction}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The bytes every hibernate and wake moved, from the supervisor's log lines (`… done:
/// 4.0 GiB moved, …`).
fn moved(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| {
            let (before, _) = l.split_once(" moved, ")?;
            let mut words = before.rsplit(' ');
            let unit = words.next()?;
            let n: f64 = words.next()?.parse().ok()?;
            let scale = match unit {
                "B" => 1.0,
                "KiB" => 1024.0,
                "MiB" => 1024.0 * 1024.0,
                "GiB" => GIB as f64,
                "TiB" => 1024.0 * GIB as f64,
                _ => return None,
            };
            Some((n * scale) as u64)
        })
        .sum()
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[at]
}

/// Latencies in ms of the non-streamed requests of `class` that `keep` keeps, sorted.
fn latencies(run: &Run, class: Class, keep: impl Fn(&Done) -> bool) -> Vec<f64> {
    times(run, class, keep, |d| d.latency)
}

/// `what` of the non-streamed requests of `class` that `keep` keeps, in ms, sorted.
fn times(
    run: &Run,
    class: Class,
    keep: impl Fn(&Done) -> bool,
    what: impl Fn(&Done) -> Duration,
) -> Vec<f64> {
    let mut v: Vec<f64> = run
        .done
        .iter()
        .filter(|d| d.ok && !d.planned.stream && MODELS[d.planned.model].2 == class && keep(d))
        .map(|d| what(d).as_secs_f64() * 1000.0)
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

fn main() {
    supervise_if_asked();
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build measures unoptimized code; use --release");
    }
    let options = Options::parse();
    let seconds = options.seconds;
    let plan = schedule(seconds, options.zipf);
    let policy = match options.policy.is_empty() {
        true => "the defaults".to_owned(),
        false => options.policy.trim().replace('\n', ", "),
    };
    println!(
        "bench_node: {} requests over {seconds} s (Zipf s = {}), 13 models, {} GiB of quotas on a {DEVICE_GIB} GiB GPU ({:.0} %), link {LINK_GBPS} GB/s; policy: {policy}, hibernate_after {}",
        plan.len(),
        options.zipf,
        MODELS.iter().map(|m| m.1).sum::<u64>(),
        100.0 * MODELS.iter().map(|m| m.1).sum::<u64>() as f64 / DEVICE_GIB as f64,
        options.hibernate_after.as_deref().unwrap_or("off")
    );
    let ideal = {
        let node = start("ideal", 1024, "", None);
        eprintln!("ideal node ready; sending the traffic");
        drive(&node, &plan)
    };
    let real = {
        let after = options.hibernate_after.as_deref();
        let node = start("real", DEVICE_GIB, &options.policy, after);
        eprintln!("80 GiB node ready; sending the traffic");
        drive(&node, &plan)
    };
    report(&ideal, &real);
    let png = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench_node.png");
    picture(&real, &png);
    println!("\npicture: {}", png.display());
}

fn report(ideal: &Run, real: &Run) {
    let refused = |r: &Run| r.done.iter().filter(|d| !d.ok).count();
    println!(
        "\n| run | requests/s | refused | hibernates/min | wakes/min | GiB moved | swap time (s) | peak resident / device |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, r) in [("ideal (1 TiB GPU)", ideal), ("80 GiB GPU", real)] {
        let minutes = r.wall.as_secs_f64() / 60.0;
        let peak = r.samples.iter().map(|s| s.1).max().unwrap_or(0);
        let device = if std::ptr::eq(r, ideal) {
            1024 * GIB
        } else {
            DEVICE_GIB * GIB
        };
        println!(
            "| {name} | {:.2} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} / {:.0} GiB |",
            r.done.len() as f64 / r.wall.as_secs_f64(),
            refused(r),
            r.swaps_out as f64 / minutes,
            r.swaps_in as f64 / minutes,
            r.moved_bytes as f64 / GIB as f64,
            r.swap_seconds,
            peak as f64 / GIB as f64,
            device as f64 / GIB as f64,
        );
    }
    println!("\nlatency (ms; non-streamed requests): p50 / p99 / p99.9 (count)\n");
    println!(
        "| class | ideal | 80 GiB, warm | warm p99 ÷ ideal p99 | 80 GiB, woken | woken: added p50 (ms) | its swap over the link (ms) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for class in [Class::Embed, Class::Small, Class::Large] {
        let all = latencies(ideal, class, |_| true);
        let warm = latencies(real, class, |d| d.found == Found::Ready);
        let woken = latencies(real, class, |d| d.found == Found::Wake);
        let fmt = |v: &[f64]| {
            format!(
                "{:.0} / {:.0} / {:.0} ({})",
                percentile(v, 0.5),
                percentile(v, 0.99),
                percentile(v, 0.999),
                v.len()
            )
        };
        // A woken request's swap: its model's quota in (and as much out) over the link.
        let sizes: Vec<u64> = MODELS
            .iter()
            .filter(|m| m.2 == class)
            .map(|m| m.1)
            .collect();
        let mean_gib = sizes.iter().sum::<u64>() as f64 / sizes.len() as f64;
        let link_ms = mean_gib * GIB as f64 / (LINK_GBPS * 1e9) * 1000.0;
        println!(
            "| {} | {} | {} | {:.2} | {} | {:.0} | {:.0} (in) – {:.0} (out and in) |",
            class.name(),
            fmt(&all),
            fmt(&warm),
            percentile(&warm, 0.99) / percentile(&all, 0.99),
            fmt(&woken),
            percentile(&woken, 0.5) - percentile(&all, 0.5),
            link_ms,
            2.0 * link_ms,
        );
    }
    println!(
        "\nwhere the time went (ms, p50 / p99): waiting for an instance (the front door's \
         Server-Timing), and after it (at the instance)\n"
    );
    println!(
        "| class | warm: waiting | warm: at the instance | woken: waiting | woken: at the instance | found a start / no header |"
    );
    println!("|---|---|---|---|---|---|");
    let fmt2 = |v: &[f64]| format!("{:.0} / {:.0}", percentile(v, 0.5), percentile(v, 0.99));
    for class in [Class::Embed, Class::Small, Class::Large] {
        let at_instance = |d: &Done| d.latency.saturating_sub(d.queued);
        let warm = |d: &Done| d.found == Found::Ready;
        let woken = |d: &Done| d.found == Found::Wake;
        let count = |f: Found| {
            real.done
                .iter()
                .filter(|d| MODELS[d.planned.model].2 == class && d.found == f)
                .count()
        };
        println!(
            "| {} | {} | {} | {} | {} | {} / {} |",
            class.name(),
            fmt2(&times(real, class, warm, |d| d.queued)),
            fmt2(&times(real, class, warm, at_instance)),
            fmt2(&times(real, class, woken, |d| d.queued)),
            fmt2(&times(real, class, woken, at_instance)),
            count(Found::Start),
            count(Found::Unknown),
        );
    }
}

/// The picture: latency over time (warm grey, woken red, log scale), and below it the
/// GPU's resident bytes (black) with each model's quota while awake, stacked.
fn picture(run: &Run, path: &Path) {
    let (w, h) = (1200usize, 700usize);
    let mut px = vec![255u8; w * h * 3];
    let mut dot = |x: usize, y: usize, c: [u8; 3]| {
        if x < w && y < h {
            px[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&c);
        }
    };
    let t_end = run.wall.as_secs_f64().max(1.0);
    let xs = |t: f64| 40 + ((t / t_end) * (w - 60) as f64) as usize;
    // Top: latency, 1 ms .. 100 s on a log scale, rows 20..320.
    for d in &run.done {
        let ms = (d.latency.as_secs_f64() * 1000.0).clamp(1.0, 100_000.0);
        let y = 320 - ((ms.log10() / 5.0) * 300.0) as usize;
        let x = xs(d.planned.at.as_secs_f64());
        let c = if d.found == Found::Wake {
            [200, 30, 30]
        } else {
            [120, 120, 120]
        };
        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            dot(x + dx, y + dy, c);
        }
    }
    for decade in 0..=5 {
        let y = 320 - decade * 60;
        for x in (40..w - 20).step_by(4) {
            dot(x, y, [210, 210, 210]);
        }
    }
    // Bottom: bytes, 0 .. 2 × the device, rows 380..680.
    let scale =
        |b: u64| 680 - ((b as f64 / (2.0 * (DEVICE_GIB * GIB) as f64)) * 300.0).min(300.0) as usize;
    for x in (40..w - 20).step_by(3) {
        dot(x, scale(DEVICE_GIB * GIB), [60, 60, 200]); // the device's size
    }
    for pair in run.samples.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        for x in xs(a.0)..=xs(b.0) {
            let mut base = 0;
            for (m, bytes) in a.2.iter().enumerate() {
                let hue = (m * 47 % 255) as u8;
                for y in scale(base + bytes)..scale(base) {
                    dot(x, y, [hue, 180u8.wrapping_sub(hue / 2), 255 - hue]);
                }
                base += bytes;
            }
            dot(x, scale(a.1), [0, 0, 0]);
            dot(x, scale(a.1) + 1, [0, 0, 0]);
        }
    }
    let file = std::fs::File::create(path).expect("the picture's file");
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().expect("a PNG header");
    writer.write_image_data(&px).expect("the picture");
}
