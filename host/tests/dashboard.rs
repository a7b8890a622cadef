//! `guardian dashboard` in a real browser: the built binary starts `guardian dev`
//! (two share servers), reports are submitted and a batch sealed with the CLI,
//! then `guardian dashboard` is started and opened in headless Chromium, driven
//! over WebDriver (`chromedriver`). The test reads the numbers the page shows
//! next to its chart, presses "Seal a batch now" (first with too few reports,
//! which the page must explain, then with enough), waits for the new total, and
//! saves a screenshot to `target/dashboard.png`. Finally the servers are stopped
//! and the page must say that they cannot be reached.
//!
//! Chromium and chromedriver are required (Debian: `apt-get install chromium
//! chromium-driver`; `.ci/run` installs them): without them the test fails.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tempfile::TempDir;

const GUARDIAN: &str = env!("CARGO_BIN_EXE_guardian");
/// `guardian dev` compiles the built-in plugins on its first start.
const START_TIMEOUT: Duration = Duration::from_secs(300);
/// The page refreshes every 2 s; the first total also loads the plugin.
const PAGE_TIMEOUT: Duration = Duration::from_secs(120);

/// A child process, killed when dropped (also when the test fails), with its
/// process group when it leads one (chromedriver does, so that the Chromium it
/// started goes too).
struct Running {
    child: Child,
    what: &'static str,
}

impl Drop for Running {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn start(what: &'static str, command: &mut Command) -> (Running, mpsc::Receiver<String>) {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let lines = read_lines(child.stdout.take().unwrap());
        (Running { child, what }, lines)
    }

    /// Waits for the first line `pick` accepts, returning what it returned.
    fn wait_for<T>(
        &self,
        lines: &mpsc::Receiver<String>,
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> T {
        let mut seen = Vec::new();
        loop {
            match lines.recv_timeout(START_TIMEOUT) {
                Ok(line) => {
                    if let Some(found) = pick(&line) {
                        return found;
                    }
                    seen.push(line);
                }
                Err(e) => panic!(
                    "{} did not print what was expected ({e}); it printed:\n{}",
                    self.what,
                    seen.join("\n")
                ),
            }
        }
    }
}

/// Reads `stdout` to the end on a thread (so that the child never blocks on a
/// full pipe) and hands the lines over.
fn read_lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// A base port p with p and p + 1 free (for two servers).
fn free_base_port() -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("found no two consecutive free ports");
}

/// The program `name` on the PATH; the test fails (it never skips) without it.
fn required_program(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed, and this test needs a real browser: \
                 apt-get install -y chromium chromium-driver (as .ci/run does)"
            )
        })
}

/// Runs a `guardian` command in `dir` with exactly the `GUARDIAN_*` variables given.
fn guardian(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = Command::new(GUARDIAN);
    command
        .args(args)
        .current_dir(dir)
        .env_remove("GUARDIAN_SERVERS")
        .env_remove("GUARDIAN_TOKEN")
        .stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let out: Output = command.output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(
        out.status.success(),
        "guardian {args:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Waits until the page has an element matching `css`.
async fn wait_for(browser: &Client, css: &str) -> fantoccini::elements::Element {
    match browser
        .wait()
        .at_most(PAGE_TIMEOUT)
        .for_element(Locator::Css(css))
        .await
    {
        Ok(element) => element,
        Err(e) => {
            let body = match browser.find(Locator::Css("body")).await {
                Ok(body) => body.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            panic!("the page never showed {css:?} ({e}); it shows:\n{body}")
        }
    }
}

/// The data table of an endpoint's card (next to its chart), as `{label: value}`.
async fn table(browser: &Client, endpoint: &str) -> Value {
    let mut shown = serde_json::Map::new();
    let rows = format!(r#"[data-endpoint="{endpoint}"] table.data tr"#);
    for row in browser.find_all(Locator::Css(&rows)).await.unwrap() {
        let label = row.attr("data-label").await.unwrap().unwrap();
        let value = row
            .find(Locator::Css("td"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        shown.insert(label, Value::String(value));
    }
    Value::Object(shown)
}

fn submit(dir: &Path, servers: &str, token: &str, colors: &[&str]) {
    let file = dir.join("colors.jsonl");
    let lines: Vec<String> = colors.iter().map(|c| format!("{c:?}")).collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = guardian(
        dir,
        &["submit", "demo", "--file", file.to_str().unwrap()],
        &[("GUARDIAN_SERVERS", servers), ("GUARDIAN_TOKEN", token)],
    );
    assert!(out.contains(&format!("stored {}", colors.len())), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_charts_totals_and_seals_in_a_real_browser() {
    let chromium = required_program("chromium");
    let chromedriver = required_program("chromedriver");
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();

    // Two share servers with the demo histogram (red, green, blue; min batch 3).
    let (mut dev, dev_lines) = Running::start(
        "guardian dev",
        Command::new(GUARDIAN)
            .args(["dev", "--dir"])
            .arg(dir.join("data"))
            .args(["--port", &free_base_port().to_string()])
            .current_dir(dir)
            .stderr(Stdio::null()),
    );
    let servers = dev.wait_for(&dev_lines, |line| {
        line.trim()
            .strip_prefix("export GUARDIAN_SERVERS=")
            .map(str::to_owned)
    });
    let banner_dashboard = dev.wait_for(&dev_lines, |line| {
        line.contains("guardian dashboard").then(|| line.to_owned())
    });
    assert!(
        banner_dashboard.contains("127.0.0.1:8080"),
        "{banner_dashboard}"
    );
    let issuer = dir.join("data").join("dev-issuer");
    let token = |role: &str| {
        guardian(
            dir,
            &[
                "token",
                "--role",
                role,
                "--issuer-dir",
                issuer.to_str().unwrap(),
            ],
            &[],
        )
        .trim()
        .to_owned()
    };
    let user = token("user");
    let scientist = token("scientist");

    // Four reports, sealed into one batch with the CLI.
    submit(dir, &servers, &user, &["red", "green", "blue", "red"]);
    let out = guardian(
        dir,
        &["collect", "demo", "--json"],
        &[
            ("GUARDIAN_SERVERS", &servers),
            ("GUARDIAN_TOKEN", &scientist),
        ],
    );
    let collected: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(collected["count"], 4, "{collected}");

    // A sum endpoint too, charted as labelled values.
    let developer = token("developer");
    guardian(
        dir,
        &[
            "endpoint",
            "create",
            "sums",
            "--plugin",
            "sum",
            "--params",
            r#"{"length": 2}"#,
            "--min-batch",
            "2",
        ],
        &[
            ("GUARDIAN_SERVERS", &servers),
            ("GUARDIAN_TOKEN", &developer),
        ],
    );
    for value in ["[1, 20]", "[3, 40]"] {
        guardian(
            dir,
            &["submit", "sums", "--value", value],
            &[("GUARDIAN_SERVERS", &servers), ("GUARDIAN_TOKEN", &user)],
        );
    }
    guardian(
        dir,
        &["collect", "sums"],
        &[
            ("GUARDIAN_SERVERS", &servers),
            ("GUARDIAN_TOKEN", &scientist),
        ],
    );

    // The dashboard, on a port of its own choosing, with the scientist's token.
    let (dashboard, dashboard_lines) = Running::start(
        "guardian dashboard",
        Command::new(GUARDIAN)
            .args(["dashboard", "--listen", "127.0.0.1:0"])
            .current_dir(dir)
            .env("GUARDIAN_SERVERS", &servers)
            .env("GUARDIAN_TOKEN", &scientist)
            .stderr(Stdio::null()),
    );
    let page = dashboard.wait_for(&dashboard_lines, |line| {
        line.strip_prefix("Dashboard: ")
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
    });

    // Headless Chromium through chromedriver, on a free port.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (driver, driver_lines) = Running::start(
        "chromedriver",
        Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stderr(Stdio::null()),
    );
    driver.wait_for(&driver_lines, |line| {
        line.contains("started successfully").then_some(())
    });
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,900"],
        },
    });
    let browser = ClientBuilder::new(HttpConnector::new())
        .capabilities(capabilities.as_object().unwrap().clone())
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session with headless Chromium");
    browser.goto(&page).await.unwrap();

    // The released total: one batch of four, drawn as bars with their numbers.
    wait_for(
        &browser,
        r#"[data-endpoint="demo"][data-state="ok"][data-chart="bars"][data-count="4"][data-batches="1"]"#,
    )
    .await;
    assert_eq!(
        table(&browser, "demo").await,
        json!({"red": "2", "green": "1", "blue": "1"})
    );
    wait_for(
        &browser,
        r#"[data-endpoint="sums"][data-state="ok"][data-chart="values"][data-count="2"]"#,
    )
    .await;
    assert_eq!(
        table(&browser, "sums").await,
        json!({"#0": "4", "#1": "60"})
    );
    let card = browser
        .find(Locator::Css(r#"[data-endpoint="demo"]"#))
        .await
        .unwrap();
    assert_eq!(
        card.find(Locator::Css(".plugin"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "histogram"
    );
    assert_eq!(
        card.find(Locator::Css(".min-batch"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "3"
    );
    // Chart.js drew on the canvas (it sets its size and keeps the chart).
    let drawn = browser
        .execute(
            r#"return Chart.getChart(document.querySelector('[data-endpoint="demo"] canvas'))?.data.datasets[0].data"#,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(drawn, json!([2, 1, 1]));

    // Sealing with no report waiting: the page says why nothing was sealed.
    let seal = card.find(Locator::Css("button.seal")).await.unwrap();
    seal.click().await.unwrap();
    let refusal = wait_for(
        &browser,
        r#"[data-endpoint="demo"] .seal-status[data-code="batch_too_small"]"#,
    )
    .await;
    let text = refusal.text().await.unwrap();
    assert!(
        text.contains("only 0 reports") && text.contains("at least 3"),
        "{text}"
    );

    // Three more reports, seen waiting, then sealed from the page.
    submit(dir, &servers, &user, &["green", "green", "blue"]);
    wait_for(&browser, r#"[data-endpoint="demo"][data-waiting="3/3"]"#).await;
    seal.click().await.unwrap();
    wait_for(
        &browser,
        r#"[data-endpoint="demo"] .seal-status[data-batch]:not([data-code])"#,
    )
    .await;
    wait_for(
        &browser,
        r#"[data-endpoint="demo"][data-state="ok"][data-count="7"][data-batches="2"]"#,
    )
    .await;
    assert_eq!(
        table(&browser, "demo").await,
        json!({"red": "2", "green": "3", "blue": "2"})
    );
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    std::fs::create_dir_all(&target).unwrap();
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(target.join("dashboard.png"), png).unwrap();

    // The servers stop: the page says so instead of showing a stale chart.
    let _ = dev.child.kill();
    let _ = dev.child.wait();
    let problem = wait_for(&browser, r#"#problems p[data-code="unreachable"]"#).await;
    let text = problem.text().await.unwrap();
    assert!(text.contains("could not be reached"), "{text}");
    wait_for(
        &browser,
        r#"[data-endpoint="demo"][data-state="error"] .error[data-code="unreachable"]"#,
    )
    .await;

    browser.close().await.unwrap();
    drop(driver);
    drop(dashboard);
    drop(dev);
}
