//! Issue 27: the dashboard in a real browser. Headless Chromium (Debian's `chromium` and
//! `chromium-driver`, which `.ci/run` installs) driven through WebDriver (fantoccini) on a
//! fake node: the page loads with no console error, shows the models and numbers the
//! control API reports, a GPU's bar grows when a model allocates, actions need the token
//! and a hibernate clicked in the page shows in the status, a model's output is shown,
//! and the page fits a phone's width. Screenshots are kept under
//! `target/debug/artifacts/`.

mod common;
use common::supervisor::*;
use common::*;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "dashboard-token-0123456789abcdef";

/// chromedriver on a port of its own, killed at the end.
struct Driver(Child, u16);

impl Driver {
    fn start() -> Driver {
        let port = cuvisor::node::process::free_port().unwrap();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("chromedriver: {e} (apt-get install chromium chromium-driver)")
            });
        wait_until("chromedriver", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Driver(child, port)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The browser's console, as Chromium's driver keeps it (`goog:loggingPrefs`).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }
    fn method_and_body(&self, _: &url::Url) -> (hyper::http::Method, Option<String>) {
        (
            hyper::http::Method::POST,
            Some(r#"{"type": "browser"}"#.into()),
        )
    }
}

async fn console_errors(c: &Client) -> Vec<String> {
    let log = c.issue_cmd(BrowserLog).await.expect("the browser's log");
    log.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.expect(script)
}

/// Waits until `script` (a JavaScript body that returns) returns true.
async fn until(c: &Client, what: &str, script: &str) {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if js(c, script).await == json!(true) {
            return;
        }
        if Instant::now() >= end {
            let page = js(c, "return document.querySelector('main').outerHTML").await;
            let updated = js(c, "return document.getElementById('updated').textContent").await;
            panic!(
                "timed out waiting for {what}: {updated}\n{}",
                page.as_str().unwrap_or("")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An attribute of the element `css` finds, read at once in the page (the page redraws its
/// GPUs every poll: an element found first could be gone by the time it is asked).
async fn attribute(c: &Client, css: &str, name: &str) -> String {
    let script = format!("return document.querySelector('{css}')?.getAttribute('{name}') ?? null");
    js(c, &script)
        .await
        .as_str()
        .unwrap_or_else(|| panic!("{css} {name}"))
        .to_owned()
}

fn screenshot(name: &str, png: &[u8]) {
    let dir = target_dir().join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
}

#[test]
fn the_dashboard_shows_the_node_and_acts_in_a_real_browser() {
    let dir = TempDir::new("dashboard");
    let token = dir.path("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (http, dashboard) = (
        cuvisor::node::process::free_port().unwrap(),
        cuvisor::node::process::free_port().unwrap(),
    );
    let probe = stub_dir().join("driver_probe");
    let on_gpu = |name: &str, script: &str| {
        format!(
            "[[model]]\nname = \"{name}\"\ncommand = \"{}\"\nargs = [{script}]\ngpus = 1\ngpu_quota = \"1GiB\"\n",
            probe.display()
        )
    };
    let chat = format!(
        "[[model]]\nname = \"chat\"\ncommand = \"python3\"\n\
         args = [\"{}\", \"--port\", \"{{port}}\", \"--name\", \"chat\"]\n\
         gpus = 1\ngpu_quota = \"512MiB\"\n[model.serve]\nhealth = \"/health\"\n",
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/servers/openai_model.py")
    );
    let s = Supervisor::start_in(
        "dashboard",
        &format!(
            "http = \"127.0.0.1:{http}\"\ndashboard = \"127.0.0.1:{dashboard}\"\n\
             dashboard_token = \"{}\"\n",
            token.display()
        ),
        &fake_node(1, "4GiB", &dir.path("gpu-state")),
        &format!(
            "{chat}{}{}",
            on_gpu(
                "held",
                r#""init", "alloc", "64MiB", "memset", "0", "sleep", "100000""#
            ),
            on_gpu("grower", r#""init", "alloc", "48MiB", "sleep", "100000""#),
        ),
    );
    wait_until("held's allocation", Duration::from_secs(10), || {
        s.model("held")["gpu_used_bytes"].as_u64() == Some(64 * MIB)
    });
    // A request, for the front door's figures.
    assert_eq!(chat_events(http, r#"{"model": "chat"}"#)[0]["status"], 200);

    let driver = Driver::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1280,1100"],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities.as_object().unwrap().clone())
            .connect(&format!("http://127.0.0.1:{}", driver.1))
            .await
            .expect("a browser session");
        c.goto(&format!("http://127.0.0.1:{dashboard}/")).await.unwrap();
        until(&c, "the first poll", "return Number(document.body.dataset.polls || 0) >= 1").await;

        // The GPU's bar follows a model's allocations: grower stopped gives its 48 MiB
        // back; started again, it allocates them again.
        let uuid = s.model("held")["gpus"][0]["uuid"].as_str().unwrap().to_owned();
        let resident = format!("[data-gpu=\"{uuid}\"]");
        let grower = format!("{resident} li[data-model=\"grower\"]");
        let control = |path: &str| {
            let (code, body) = cuvisor::control::request(&s.socket, "POST", path).unwrap();
            assert_eq!(code, 200, "{path}: {body}");
        };
        control("/models/grower/stop");
        until(
            &c,
            "grower's memory given back",
            &format!(
                "return document.querySelector('{grower}')?.dataset.used === '0' && \
                 document.querySelector('{resident}').dataset.resident === '{}'",
                64 * MIB
            ),
        )
        .await;
        control("/models/grower/start");
        until(
            &c,
            "grower's allocation in the bar",
            &format!(
                "return document.querySelector('{resident}').dataset.resident === '{}' && \
                 document.querySelectorAll('{resident} .bar .seg').length === 2",
                112 * MIB
            ),
        )
        .await;

        // The numbers are the control API's.
        let status = s.status();
        for m in status["models"].as_array().unwrap() {
            let name = m["name"].as_str().unwrap();
            let row = format!("tr[data-model=\"{name}\"]");
            assert_eq!(attribute(&c, &row, "data-state").await, m["state"].as_str().unwrap(), "{name}");
            for i in m["instances"].as_array().unwrap() {
                let chip = format!("{row} .chip[data-instance=\"{}\"]", i["index"]);
                let text = js(&c, &format!("return document.querySelector('{chip}').textContent")).await;
                assert_eq!(text, json!(format!("{}: {}", i["index"], i["state"].as_str().unwrap())));
            }
            // A model that has not allocated has not met the GPU (chat's server allocates
            // nothing).
            let Some(used) = m["gpus"][0]["used_bytes"].as_u64() else {
                continue;
            };
            let shown = attribute(&c, &format!("{resident} li[data-model=\"{name}\"]"), "data-used").await;
            assert_eq!(shown, used.to_string(), "{name}'s GPU memory");
            let quota = m["gpus"][0]["quota_bytes"].as_u64().unwrap();
            let shown = attribute(&c, &format!("{resident} li[data-model=\"{name}\"]"), "data-quota").await;
            assert_eq!(shown, quota.to_string(), "{name}'s quota");
        }
        let total: u64 = status["models"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["gpus"][0]["used_bytes"].as_u64())
            .sum();
        assert_eq!(attribute(&c, &resident, "data-resident").await, total.to_string());
        // The one request's latency, from the metrics' histogram: under the seconds the test
        // took to send it.
        let p99: f64 = attribute(&c, "tr[data-model=\"chat\"] td[data-field=\"latency\"]", "data-p99")
            .await
            .parse()
            .unwrap();
        assert!(p99 > 0.0 && p99 < 10.0, "p99 {p99}");
        let text = c.find(Locator::Css("#models")).await.unwrap().text().await.unwrap();
        assert!(text.contains("chat") && text.contains("held") && text.contains("grower"), "{text}");
        screenshot("dashboard.png", &c.screenshot().await.unwrap());

        // Without the token, an action is refused, and says why.
        let stop = c.find(Locator::Css("tr[data-model=\"chat\"] button[data-action=\"stop\"]")).await.unwrap();
        stop.click().await.unwrap();
        until(&c, "the refusal", "return document.getElementById('notice').textContent.includes('token')").await;
        assert_eq!(s.model("chat")["instances"][0]["state"], "ready");

        // With it: a hibernate clicked in the page shows in the status, and in the page.
        c.find(Locator::Id("token")).await.unwrap().send_keys(TOKEN).await.unwrap();
        c.find(Locator::Id("token-use")).await.unwrap().click().await.unwrap();
        let hibernate = c
            .find(Locator::Css("tr[data-model=\"held\"] button[data-action=\"hibernate\"]"))
            .await
            .unwrap();
        hibernate.click().await.unwrap();
        let end = Instant::now() + Duration::from_secs(20);
        while s.model("held")["swap"]["hibernated"] != true {
            assert!(Instant::now() < end, "{}", s.model("held"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        until(
            &c,
            "held hibernated in the page",
            &format!("return document.querySelector('{resident} li[data-model=\"held\"]').dataset.hibernated === '1'"),
        )
        .await;
        assert_eq!(attribute(&c, "tr[data-model=\"held\"]", "data-state").await, "hibernated");

        // A live quota typed in the page (kept while the page redraws) and set.
        let polls = js(&c, "return Number(document.body.dataset.polls)").await;
        let quota = c
            .find(Locator::Css("tr[data-model=\"grower\"] input[data-quota-input]"))
            .await
            .unwrap();
        quota.send_keys("2GiB").await.unwrap();
        until(
            &c,
            "a redraw",
            &format!("return Number(document.body.dataset.polls) > {polls}"),
        )
        .await;
        c.find(Locator::Css("tr[data-model=\"grower\"] button[data-action=\"quota\"]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let end = Instant::now() + Duration::from_secs(20);
        while s.model("grower")["gpu_quota_bytes"].as_u64() != Some(2 << 30) {
            assert!(Instant::now() < end, "{}", s.model("grower"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        until(
            &c,
            "the quota in the page",
            &format!(
                "return document.querySelector('{grower}').dataset.quota === '{}'",
                2u64 << 30
            ),
        )
        .await;

        // A model's output, with the token.
        let select = c.find(Locator::Id("logs-model")).await.unwrap();
        select.select_by_value("held").await.unwrap();
        until(
            &c,
            "held's output",
            "return document.getElementById('logs').textContent.includes('alloc 64MiB -> 0')",
        )
        .await;
        screenshot("dashboard-acted.png", &c.screenshot().await.unwrap());

        // A phone's width: the page does not overflow it (the table scrolls in its box).
        c.set_window_size(390, 844).await.unwrap();
        until(&c, "the next poll", "return Number(document.body.dataset.polls) >= 3").await;
        js(&c, "window.scrollTo(0, 0); return true").await;
        assert_eq!(
            js(&c, "return document.documentElement.scrollWidth <= window.innerWidth").await,
            json!(true),
            "the page is wider than a phone"
        );
        screenshot("dashboard-phone.png", &c.screenshot().await.unwrap());

        let errors = console_errors(&c).await;
        assert!(errors.is_empty(), "the console: {errors:#?}");
        c.close().await.unwrap();
    });
}

/// `GET`/`POST` on the dashboard's listener: (status, body).
fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: node\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    let code = answer[9..12].parse().unwrap();
    (code, answer)
}

/// The listener without a browser: its page and reads for anyone, with headers that keep
/// the page to its own origin; actions and a model's output only with the token (401), and
/// none at all without `dashboard_token` (403: read-only).
#[test]
fn the_dashboard_listener_reads_for_anyone_and_acts_with_its_token() {
    let dir = TempDir::new("dashboard-listener");
    let token = dir.path("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (guarded, open) = (
        cuvisor::node::process::free_port().unwrap(),
        cuvisor::node::process::free_port().unwrap(),
    );
    let s = Supervisor::start_with(
        "dashboard-guarded",
        &format!(
            "dashboard = \"127.0.0.1:{guarded}\"\ndashboard_token = \"{}\"\n",
            token.display()
        ),
        &[],
        &holder("m", "1MiB", "4MiB"),
    );
    let (code, page) = http(guarded, "GET", "/", None);
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{page}"
    );
    assert!(
        page.contains("<script src=\"/app.js\" defer></script>"),
        "{page}"
    );
    assert_eq!(http(guarded, "GET", "/app.js", None).0, 200);
    assert_eq!(http(guarded, "GET", "/models", None).0, 200);
    assert_eq!(http(guarded, "GET", "/metrics", None).0, 200);
    assert_eq!(http(guarded, "GET", "/models/m/logs", None).0, 401);
    assert_eq!(http(guarded, "POST", "/models/m/stop", None).0, 401);
    assert_eq!(
        http(guarded, "POST", "/models/m/stop", Some("wrong")).0,
        401
    );
    assert_eq!(s.model("m")["state"], "running", "nothing was stopped");
    assert_eq!(http(guarded, "GET", "/models/m/logs", Some(TOKEN)).0, 200);
    assert_eq!(http(guarded, "POST", "/models/m/stop", Some(TOKEN)).0, 200);
    assert_eq!(http(guarded, "GET", "/elsewhere", None).0, 404);

    let _t = Supervisor::start_with(
        "dashboard-open",
        &format!("dashboard = \"127.0.0.1:{open}\"\n"),
        &[],
        &holder("n", "1MiB", "4MiB"),
    );
    assert_eq!(http(open, "GET", "/models/n", None).0, 200);
    let (code, why) = http(open, "POST", "/models/n/stop", Some(TOKEN));
    assert_eq!(code, 403, "{why}");
    assert!(why.contains("the dashboard is read-only"), "{why}");
}
