//! The `cuvisor` command line. Only `--version` and `--help` exist so far; the
//! subcommands (`run`, `exec`, `status`, `ledger`) arrive with the supervisor and ledger
//! issues, and until then the binary says so instead of pretending.

use std::process::ExitCode;

const USAGE: &str = "\
usage: cuvisor [--version | --help]

cuvisor runs many AI models on one GPU. This build is the project's foundation:
the supervisor subcommands (run, exec, status, ledger) are not implemented yet.
To try the fake GPU that the test suite runs on: cargo run --example demo";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["--version" | "-V"] => {
            println!("cuvisor {}", cuvisor::VERSION);
            ExitCode::SUCCESS
        }
        [] | ["--help" | "-h"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        [other, ..] => {
            eprintln!("cuvisor: unknown command or option \"{other}\"\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
