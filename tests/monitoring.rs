//! Issue 27, monitoring: the Prometheus rules (`deploy/prometheus/rules.yml`) pass
//! `promtool` (Debian's `prometheus` package: `.ci/run` installs it) and their unit tests,
//! and every metric the rules and the Grafana dashboard (`deploy/grafana/cuvisor.json`)
//! name is in cuvisor's `/metrics`, with samples, on a fake node.

mod common;
use common::supervisor::*;
use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

fn promtool(args: &[&str]) -> String {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(deploy("prometheus"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "promtool: {e} (install Debian's prometheus package: apt-get install prometheus)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {text}");
    text
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let checked = promtool(&["check", "rules", "rules.yml"]);
    assert!(checked.contains("SUCCESS: 6 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "rules_test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Every `cuvisor_…` name in `text`.
fn names(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("cuvisor_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        found.insert(name);
    }
    found
}

/// The queries of the dashboard's panels and variables.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(deploy("grafana/cuvisor.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut queries = Vec::new();
    let panels = dashboard["panels"].as_array().unwrap();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "each panel asks the dashboard's data source: {panel}"
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{panel}");
        for t in targets {
            queries.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = variable["definition"].as_str() {
            queries.push(q.to_owned());
        }
    }
    queries
}

/// On a fake node with one GPU: a served model scaled to zero (a cold start), a model that
/// holds memory and is hibernated and woken, a request for no model; then every name the
/// rules and the dashboard use has samples in `/metrics`.
#[test]
fn every_metric_the_dashboard_and_the_rules_name_is_in_the_metrics() {
    let state = TempDir::new("monitoring-state");
    let http = cuvisor::node::process::free_port().unwrap();
    let chat = format!(
        "[[model]]\nname = \"chat\"\ncommand = \"python3\"\n\
         args = [\"{}\", \"--port\", \"{{port}}\", \"--name\", \"chat\"]\n\
         gpus = 1\ngpu_quota = \"1GiB\"\nmin_instances = 0\nmax_instances = 1\n\
         [model.serve]\nhealth = \"/health\"\n",
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/servers/openai_model.py")
    );
    let held = holder("held", "1MiB", "1GiB").replace("gpu_quota", "gpus = 1\ngpu_quota");
    let s = Supervisor::start_in(
        "monitoring",
        &format!("http = \"127.0.0.1:{http}\"\n"),
        &fake_node(1, "4GiB", &state.path("gpu-state")),
        &format!("{chat}{held}"),
    );
    wait_until("the allocation", Duration::from_secs(10), || {
        s.model("held")["gpu_used_bytes"].as_u64() == Some(MIB)
    });
    let post = |model: &str| chat_events(http, &format!(r#"{{"model": "{model}"}}"#));
    assert_eq!(post("chat")[0]["status"], 200);
    assert_eq!(post("nobody")[0]["status"], 404);
    for action in ["hibernate", "wake"] {
        let (code, body) = cuvisor::control::request_waiting(
            &s.socket,
            "POST",
            &format!("/models/held/{action}"),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(code, 200, "{action}: {body}");
    }
    let (code, scrape) = cuvisor::control::request(&s.socket, "GET", "/metrics").unwrap();
    assert_eq!(code, 200, "{scrape}");
    let sampled: BTreeSet<String> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let rules = std::fs::read_to_string(deploy("prometheus/rules.yml")).unwrap();
    let rules_test = std::fs::read_to_string(deploy("prometheus/rules_test.yml")).unwrap();
    let mut wanted = names(&rules);
    wanted.extend(names(&rules_test));
    wanted.extend(dashboard_queries().iter().flat_map(|q| names(q)));
    assert!(wanted.len() >= 20, "{wanted:?}");
    let missing: Vec<&String> = wanted.iter().filter(|n| !sampled.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "named by the rules or the dashboard, not in /metrics: {missing:?}\n{scrape}"
    );
}
