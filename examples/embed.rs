//! cuvisor embedded in a Rust program: `cargo run --example embed`.
//!
//! The supervisor is a value ([`cuvisor::run::Running`]) that the program starts
//! (its control API, its front door and its models' workers with it), asks for its status
//! and stops; nothing of the process is taken over (no signal handling, no subreaper:
//! [`cuvisor::run::become_subreaper`] is the program's choice). The code is in
//! `support/front_door.rs`, which the demo's last step shares.

#[path = "support/front_door.rs"]
mod front_door;
mod support;

fn main() {
    // The supervisor's log lines go to `tracing`: print them on stderr.
    cuvisor::log::init(Default::default(), false);
    let stubs = std::path::PathBuf::from(env!("CUDA_STUB_DIR"));
    let dir = std::env::temp_dir().join(format!("cuvisor-embed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let served = front_door::two_models_behind_the_front_door(&stubs, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    std::process::exit(if served { 0 } else { 1 });
}
