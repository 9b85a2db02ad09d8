//! Two models behind one front door, with the supervisor embedded in this process as a
//! value ([`cuvisor::run::Running`]): started, asked for its status, stopped.
//! Shared by the demo (its last step) and `examples/embed.rs`; included with `#[path]`
//! next to `mod support`.

use cuvisor::config::Config;
use cuvisor::run::Running;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// Serves `chat` (one instance, always) and `embed` (scaled to zero: it starts on the
/// first request and stops after a minute idle) through one port, and queries both as
/// `curl` would. Every step is printed; false if a request was not answered as expected.
pub fn two_models_behind_the_front_door(stubs: &Path, dir: &Path) -> bool {
    let server = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers/openai_model.py");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    // SAFETY: geteuid cannot fail.
    let isolation = if unsafe { libc::geteuid() } == 0 {
        "memory_limit = \"512MiB\"\n"
    } else {
        "isolation = { pid = false, mount = false, ipc = false, uts = false }\n"
    };
    let model = |name: &str, delay: &str, scaling: &str, serve: &str| {
        format!(
            "[[model]]\nname = \"{name}\"\ncommand = \"python3\"\n\
             args = [\"{}\", \"--port\", \"{{port}}\", \"--name\", \"{name}\", \"--delay\", \"{delay}\"]\n\
             env = {{ LD_LIBRARY_PATH = \"{}\" }}\ngpu_quota = \"1GiB\"\n{scaling}{isolation}\
             [model.serve]\nhealth = \"/health\"\n{serve}",
            server.display(),
            stubs.display()
        )
    };
    let text = format!(
        "[supervisor]\nsocket = \"{}\"\nledger_dir = \"{}\"\ngrace_period = \"2s\"\n\
         http = \"127.0.0.1:{port}\"\n\n{}\n{}",
        dir.join("control.sock").display(),
        dir.join("ledgers").display(),
        model("chat", "0", "", ""),
        model(
            "embed",
            "0.3",
            "min_instances = 0\nmax_instances = 2\n",
            "aliases = [\"text-embedding-3-small\"]\nidle_timeout = \"1m\"\n"
        ),
    );
    println!(
        "Two models behind one front door, the supervisor embedded in this program: chat runs\n\
         one instance, embed is scaled to zero and starts on its first request (a 0.3 s load).\n\
         Each is a small OpenAI-compatible server (tests/servers/openai_model.py) under the shim.\n"
    );
    for line in text.lines() {
        println!("    {line}");
    }
    // Written too, for the reload below: a supervisor reloads from its file.
    if let Err(e) = std::fs::write(dir.join("cuvisor.toml"), &text) {
        eprintln!("cannot write {}: {e}", dir.join("cuvisor.toml").display());
        return false;
    }
    let config = match Config::parse(&dir.join("cuvisor.toml"), &text) {
        Ok(c) => c,
        Err(errors) => {
            errors.iter().for_each(|e| eprintln!("{e}"));
            return false;
        }
    };
    let shim = crate::support::shim_path();
    println!("\n  cuvisor::run::Running::start(config, shim)");
    let running = match Running::start(config, shim) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cuvisor: {e}");
            return false;
        }
    };
    let mut ok = true;
    // chat's instance is ready once its health check answers: until then requests wait.
    for (model, path, body) in [
        (
            "chat",
            "/v1/chat/completions",
            r#"{"model": "chat", "messages": [{"role": "user", "content": "hi"}]}"#,
        ),
        (
            "embed",
            "/v1/embeddings",
            r#"{"model": "text-embedding-3-small", "input": "hi"}"#,
        ),
    ] {
        println!(
            "\n  $ curl -s localhost:{port}{path} -H 'Content-Type: application/json' -d '{body}'"
        );
        let started = Instant::now();
        match post(port, path, body) {
            Ok((200, answer)) => {
                println!("    {answer}");
                println!(
                    "    ({model}: answered in {} ms{})",
                    started.elapsed().as_millis(),
                    if model == "embed" {
                        ", a cold start included"
                    } else {
                        ""
                    }
                );
                ok &= answer.contains(&format!("\"served_by\": \"{model}\""));
            }
            other => {
                eprintln!("    unexpected answer: {other:?}");
                ok = false;
            }
        }
    }
    match running.status() {
        Ok(status) => {
            println!("\n  running.status():");
            for line in cuvisor::control::status_table(&status).lines() {
                println!("    {line}");
            }
        }
        Err(e) => {
            eprintln!("cuvisor: {e}");
            ok = false;
        }
    }
    // The file read again (as `cuvisor reload` or SIGHUP does): nothing changed in it,
    // so nothing is touched.
    println!("\n  running.reload()");
    match running.reload() {
        Ok(lines) => lines.iter().for_each(|l| println!("    {l}")),
        Err(why) => {
            why.iter().for_each(|l| eprintln!("    {l}"));
            ok = false;
        }
    }
    println!("\n  running.stop()");
    if let Err(e) = running.stop() {
        eprintln!("cuvisor: {e}");
        ok = false;
    }
    let closed = std::net::TcpStream::connect(("127.0.0.1", port)).is_err();
    println!("    every worker stopped; the front door is closed: {closed}");
    ok && closed
}

/// POSTs `body` as JSON to the front door: (status, body).
fn post(port: u16, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_owned()))
}
