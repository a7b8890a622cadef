//! `guardian dashboard` in a real browser and over plain HTTP: the built binary
//! starts `guardian dev` (two share servers), reports are submitted and batches
//! sealed with the CLI, then `guardian dashboard` is started.
//!
//! The browser test opens it in headless Chromium, driven over WebDriver
//! (`chromedriver`); it is the file's only browser (one session for every
//! scenario). First pages of another site try to drive the dashboard: one
//! posts a `text/plain` form to its seal route, one's script fetches a total,
//! and one plays DNS rebinding (Chromium resolves `attacker.example` to
//! 127.0.0.1, so a page of `http://attacker.example:PORT` is same-origin with
//! whatever listens on PORT): nothing is sealed on the share servers and no
//! total is read. Then the test reads the numbers the page shows next to its
//! chart, presses "Seal a batch now" (first with too few reports, which the
//! page must explain, then with enough), waits for the new total, and saves a
//! screenshot to `target/dashboard.png`. Finally the servers are stopped and
//! the page must say that they cannot be reached.
//!
//! The HTTP test sends the requests of such pages itself (foreign `Host`,
//! foreign `Origin`, `text/plain`, no token) and checks every refusal and that
//! nothing was sealed, then that the page's own requests work.
//!
//! Chromium and chromedriver are required (Debian: `apt-get install chromium
//! chromium-driver`; `cargo xtask test` installs them): without them the test fails.

#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use guardian::client::dashboard::TOKEN_HEADER;
use hyper_util::client::legacy::connect::HttpConnector;
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};

#[path = "common/dev.rs"]
mod dev;

use dev::{Dev, GUARDIAN, START_TIMEOUT, read_lines};

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
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
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
                 `cargo xtask test` installs it (Debian's chromium and chromium-driver), \
                 then runs every test. This test never skips."
            )
        })
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

/// Two share servers of `guardian dev` with the demo histogram (red, green,
/// blue; min batch 3), and tokens of its issuer.
struct Demo {
    dev: Dev,
    user: String,
    scientist: String,
    developer: String,
}

impl Demo {
    fn start() -> Demo {
        let dev = Dev::start();
        let banner_dashboard = dev
            .banner()
            .iter()
            .find(|line| line.contains("guardian dashboard"))
            .unwrap_or_else(|| panic!("no guardian dashboard in the banner:\n{:#?}", dev.banner()));
        assert!(
            banner_dashboard.contains("127.0.0.1:8080"),
            "{banner_dashboard}"
        );
        Demo {
            user: dev.mint_token("user"),
            scientist: dev.mint_token("scientist"),
            developer: dev.mint_token("developer"),
            dev,
        }
    }

    fn dir(&self) -> &Path {
        self.dev.dir()
    }

    /// Runs `guardian` with the servers and `token`; asserts success and
    /// returns stdout.
    fn guardian(&self, args: &[&str], token: &str) -> String {
        self.dev.client_ok(token, args)
    }

    fn submit(&self, colors: &[&str]) {
        let file = self.dir().join("colors.jsonl");
        let lines: Vec<String> = colors.iter().map(|c| format!("{c:?}")).collect();
        std::fs::write(&file, lines.join("\n")).unwrap();
        let out = self.guardian(
            &["submit", "demo", "--file", file.to_str().unwrap()],
            &self.user,
        );
        assert!(out.contains(&format!("stored {}", colors.len())), "{out}");
    }

    /// `guardian dashboard` on a port of its own choosing, with the scientist's
    /// token, and the address of its page.
    fn dashboard(&self) -> (Running, mpsc::Receiver<String>, Url) {
        let (dashboard, lines) = Running::start(
            "guardian dashboard",
            Command::new(GUARDIAN)
                .args(["dashboard", "--listen", "127.0.0.1:0"])
                .current_dir(self.dir())
                .env("GUARDIAN_SERVERS", self.dev.servers())
                .env("GUARDIAN_TOKEN", &self.scientist)
                .stderr(Stdio::null()),
        );
        let page = dashboard.wait_for(&lines, |line| {
            line.strip_prefix("Dashboard: ")
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_owned)
        });
        (dashboard, lines, Url::parse(&page).unwrap())
    }

    /// How many batches of `endpoint` each share server holds, asked of the
    /// servers themselves.
    async fn batches(&self, endpoint: &str) -> Vec<usize> {
        let http = reqwest::Client::new();
        let mut counts = Vec::new();
        for server in self.dev.servers().split(',') {
            let url = format!(
                "{}/api/v1/endpoints/{endpoint}/batches",
                server.trim_end_matches('/')
            );
            let list: Value = http
                .get(&url)
                .bearer_auth(&self.scientist)
                .send()
                .await
                .unwrap()
                .error_for_status()
                .unwrap()
                .json()
                .await
                .unwrap();
            counts.push(list["batches"].as_array().unwrap().len());
        }
        counts
    }
}

/// Headless Chromium through chromedriver, on a free port: the one browser of
/// this file. `attacker.example` resolves to 127.0.0.1 in it.
async fn start_browser() -> (Running, Client) {
    let chromium = required_program("chromium");
    let chromedriver = required_program("chromedriver");
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
                     "--disable-dev-shm-usage", "--window-size=1280,900",
                     "--host-resolver-rules=MAP attacker.example 127.0.0.1"],
        },
    });
    let browser = ClientBuilder::new(HttpConnector::new())
        .capabilities(capabilities.as_object().unwrap().clone())
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session with headless Chromium");
    (driver, browser)
}

/// `http://HOST:PORT` of `url`.
fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// Serves the pages of an attacker's site on a free loopback port, each aimed
/// at the dashboard at `dashboard` (an origin), and returns the port. `/seal`
/// posts a `text/plain` form to the seal route of the endpoint `sums` as soon
/// as it loads; `/read` fetches its total and says in `body[data-result]`
/// whether it could read it.
fn attacker_site(dashboard: &str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seal = format!(
        r#"<!doctype html><title>cute cats</title><body>
<form id="f" method="post" enctype="text/plain" action="{dashboard}/api/endpoints/sums/seal">
<input name='{{"a":"' value='"}}'></form>
<script>document.getElementById("f").submit();</script></body>"#
    );
    let read = format!(
        r#"<!doctype html><title>cute cats</title><body><pre id="out"></pre><script>
fetch("{dashboard}/api/endpoints/sums/total").then((r) => r.text()).then(
  (t) => {{ document.getElementById("out").textContent = t; document.body.dataset.result = "read"; }},
  (e) => {{ document.getElementById("out").textContent = String(e); document.body.dataset.result = "failed"; }});
</script></body>"#
    );
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match path {
                "/seal" => ("200 OK", seal.as_str()),
                "/read" => ("200 OK", read.as_str()),
                _ => ("404 Not Found", "not here"),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// The browser's tab: `guardian dashboard`'s page, and pages of other sites
/// trying to drive it.
#[tokio::test(flavor = "multi_thread")]
async fn in_a_real_browser_the_page_charts_and_seals_and_other_sites_cannot() {
    let demo = Demo::start();

    // Four reports, sealed into one batch with the CLI.
    demo.submit(&["red", "green", "blue", "red"]);
    let out = demo.guardian(&["collect", "demo", "--json"], &demo.scientist);
    let collected: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(collected["count"], 4, "{collected}");

    // A sum endpoint too, charted as labelled values.
    demo.guardian(
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
        &demo.developer,
    );
    for value in ["[1, 20]", "[3, 40]"] {
        demo.guardian(&["submit", "sums", "--value", value], &demo.user);
    }
    demo.guardian(&["collect", "sums"], &demo.scientist);

    let (dashboard, _dashboard_lines, page) = demo.dashboard();
    let (driver, browser) = start_browser().await;

    other_sites_can_neither_seal_nor_read(&demo, &browser, &page).await;
    the_page_charts_totals_and_seals(demo, &browser, &page).await;

    browser.close().await.unwrap();
    drop(driver);
    drop(dashboard);
}

/// Pages of another site, with two reports of `sums` waiting (enough for a
/// batch): a form posted to the seal route seals nothing, a script cannot
/// read a total, and neither can one on a rebound name.
async fn other_sites_can_neither_seal_nor_read(demo: &Demo, browser: &Client, page: &Url) {
    for value in ["[5, 6]", "[7, 8]"] {
        demo.guardian(&["submit", "sums", "--value", value], &demo.user);
    }
    assert_eq!(demo.batches("sums").await, [1, 1]);
    let dashboard = origin(page);
    let attacker = attacker_site(&dashboard);

    // A cross-site form, text/plain: the browser lands on the refusal.
    browser
        .goto(&format!("http://attacker.example:{attacker}/seal"))
        .await
        .unwrap();
    let target = page.join("/api/endpoints/sums/seal").unwrap();
    browser
        .wait()
        .at_most(PAGE_TIMEOUT)
        .for_url(&target)
        .await
        .unwrap();
    let shown = wait_for(browser, "body").await.text().await.unwrap();
    assert!(shown.contains("cross_origin"), "{shown}");
    assert_eq!(demo.batches("sums").await, [1, 1], "a foreign form sealed");

    // A cross-site script cannot read a total.
    browser
        .goto(&format!("http://attacker.example:{attacker}/read"))
        .await
        .unwrap();
    let result = wait_for(browser, "body[data-result]").await;
    let out = browser
        .find(Locator::Css("#out"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        result.attr("data-result").await.unwrap().as_deref(),
        Some("failed"),
        "{out}"
    );

    // DNS rebinding: a page of attacker.example, the name now resolving to
    // 127.0.0.1, on the dashboard's port. Its own page is refused, and so is
    // the script's same-origin fetch of a total and of a seal.
    let port = page.port().unwrap();
    browser
        .goto(&format!("http://attacker.example:{port}/"))
        .await
        .unwrap();
    let shown = wait_for(browser, "body").await.text().await.unwrap();
    assert!(shown.contains("bad_host"), "{shown}");
    assert!(!shown.contains("dashboard-token"), "{shown}");
    let fetch = |method: &'static str, path: &'static str| async move {
        browser
            .execute_async(
                r#"const [method, path, done] = arguments;
                fetch(path, {method, headers: {"Content-Type": "application/json"}, body: method === "GET" ? undefined : "{}"})
                  .then(async (r) => done({status: r.status, body: await r.text()}),
                        (e) => done({status: 0, body: String(e)}));"#,
                vec![json!(method), json!(path)],
            )
            .await
            .unwrap()
    };
    for (method, path) in [
        ("GET", "/api/endpoints/sums/total"),
        ("GET", "/api/endpoints"),
        ("POST", "/api/endpoints/sums/seal"),
    ] {
        let answer = fetch(method, path).await;
        assert_eq!(answer["status"], 421, "{method} {path}: {answer}");
        let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
        assert_eq!(
            body["error"]["code"], "bad_host",
            "{method} {path}: {answer}"
        );
    }
    assert_eq!(demo.batches("sums").await, [1, 1], "a rebound page sealed");
}

/// The dashboard's own page: charts, the seal button, and the servers going away.
async fn the_page_charts_totals_and_seals(mut demo: Demo, browser: &Client, page: &Url) {
    browser.goto(page.as_str()).await.unwrap();

    // The released total: one batch of four, drawn as bars with their numbers.
    wait_for(
        browser,
        r#"[data-endpoint="demo"][data-state="ok"][data-chart="bars"][data-count="4"][data-batches="1"]"#,
    )
    .await;
    assert_eq!(
        table(browser, "demo").await,
        json!({"red": "2", "green": "1", "blue": "1"})
    );
    wait_for(
        browser,
        r#"[data-endpoint="sums"][data-state="ok"][data-chart="values"][data-count="2"]"#,
    )
    .await;
    assert_eq!(table(browser, "sums").await, json!({"#0": "4", "#1": "60"}));
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
        browser,
        r#"[data-endpoint="demo"] .seal-status[data-code="batch_too_small"]"#,
    )
    .await;
    let text = refusal.text().await.unwrap();
    assert!(
        text.contains("only 0 reports") && text.contains("at least 3"),
        "{text}"
    );

    // Three more reports, seen waiting, then sealed from the page.
    demo.submit(&["green", "green", "blue"]);
    wait_for(browser, r#"[data-endpoint="demo"][data-waiting="3/3"]"#).await;
    seal.click().await.unwrap();
    wait_for(
        browser,
        r#"[data-endpoint="demo"] .seal-status[data-batch]:not([data-code])"#,
    )
    .await;
    wait_for(
        browser,
        r#"[data-endpoint="demo"][data-state="ok"][data-count="7"][data-batches="2"]"#,
    )
    .await;
    assert_eq!(
        table(browser, "demo").await,
        json!({"red": "2", "green": "3", "blue": "2"})
    );
    assert_eq!(demo.batches("demo").await, [2, 2]);
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    std::fs::create_dir_all(&target).unwrap();
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(target.join("dashboard.png"), png).unwrap();

    // The servers stop: the page says so instead of showing a stale chart.
    demo.dev.kill();
    let problem = wait_for(browser, r#"#problems p[data-code="unreachable"]"#).await;
    let text = problem.text().await.unwrap();
    assert!(text.contains("could not be reached"), "{text}");
    wait_for(
        browser,
        r#"[data-endpoint="demo"][data-state="error"] .error[data-code="unreachable"]"#,
    )
    .await;
}

/// Sends `request` (`what` it is) to the dashboard, which must refuse it with
/// `status` and `code`, and checks that no batch of `demo` was sealed.
async fn refused(
    what: &str,
    request: reqwest::RequestBuilder,
    status: StatusCode,
    code: &str,
    demo: &Demo,
) {
    let answer = request.send().await.unwrap();
    let answered = answer.status();
    let body: Value = answer.json().await.unwrap();
    assert_eq!(answered, status, "{what}: {body}");
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    assert!(body["error"]["message"].is_string(), "{what}: {body}");
    assert_eq!(demo.batches("demo").await, [0, 0], "{what} sealed a batch");
}

/// What another site's page could send, sent over plain HTTP: every request is
/// refused with its code and nothing is sealed; then the page's own requests
/// work.
#[tokio::test(flavor = "multi_thread")]
async fn only_the_dashboards_own_page_can_seal_or_read() {
    let demo = Demo::start();
    // Three reports waiting: a seal that went through would make a batch.
    demo.submit(&["red", "green", "blue"]);
    let (dashboard, _dashboard_lines, page) = demo.dashboard();
    let port = page.port().unwrap();
    let own = origin(&page);
    let seal = page.join("/api/endpoints/demo/seal").unwrap();
    let total = page.join("/api/endpoints/demo/total").unwrap();
    let http = reqwest::Client::new();

    // The page, with its token.
    let html = http
        .get(page.clone())
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .text()
        .await
        .unwrap();
    let token = html
        .split(r#"<meta name="guardian-dashboard-token" content=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    assert_eq!(token.len(), 64, "{token}");

    // A request with exactly these headers (reqwest adds Host unless given).
    let request = |method: Method, url: &Url, headers: &[(&str, &str)]| {
        let changes = method != Method::GET;
        let mut request = http.request(method, url.clone());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if changes {
            request = request.body("{}");
        }
        request
    };
    let json = ("content-type", "application/json");
    let own_origin = ("origin", own.as_str());
    let same_origin = ("sec-fetch-site", "same-origin");
    let with_token = (TOKEN_HEADER, token.as_str());
    let foreign = ("origin", "http://attacker.example");
    let cross_site = ("sec-fetch-site", "cross-site");
    let rebound = format!("attacker.example:{port}");
    let rebound_origin = format!("http://{rebound}");
    let rebound_host = ("host", rebound.as_str());
    let endpoints = page.join("/api/endpoints").unwrap();
    let (post, get) = (Method::POST, Method::GET);
    let (forbidden, misdirected) = (StatusCode::FORBIDDEN, StatusCode::MISDIRECTED_REQUEST);
    let cases = [
        (
            "a text/plain form of another site",
            request(
                post.clone(),
                &seal,
                &[("content-type", "text/plain"), foreign, cross_site],
            ),
            forbidden,
            "cross_origin",
        ),
        (
            "a text/plain post with the token",
            request(
                post.clone(),
                &seal,
                &[("content-type", "text/plain"), with_token],
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_content_type",
        ),
        (
            "a JSON post of another site with the token",
            request(post.clone(), &seal, &[json, foreign, with_token]),
            forbidden,
            "cross_origin",
        ),
        (
            "a JSON post of a sandboxed page with the token",
            request(post.clone(), &seal, &[json, ("origin", "null"), with_token]),
            forbidden,
            "cross_origin",
        ),
        (
            "a JSON post of the same site, another origin, with the token",
            request(
                post.clone(),
                &seal,
                &[json, ("sec-fetch-site", "same-site"), with_token],
            ),
            forbidden,
            "cross_origin",
        ),
        (
            "a JSON post of the page's origin without the token",
            request(post.clone(), &seal, &[json, own_origin, same_origin]),
            forbidden,
            "missing_dashboard_token",
        ),
        (
            "a JSON post with another token",
            request(
                post.clone(),
                &seal,
                &[json, (TOKEN_HEADER, &"0".repeat(64))],
            ),
            forbidden,
            "bad_dashboard_token",
        ),
        (
            "a seal by a rebound page, even with the token",
            request(
                post.clone(),
                &seal,
                &[
                    rebound_host,
                    json,
                    ("origin", &rebound_origin),
                    same_origin,
                    with_token,
                ],
            ),
            misdirected,
            "bad_host",
        ),
        (
            "a total read by a rebound page",
            request(get.clone(), &total, &[rebound_host, same_origin]),
            misdirected,
            "bad_host",
        ),
        (
            "the endpoints read by a rebound page",
            request(get.clone(), &endpoints, &[rebound_host, same_origin]),
            misdirected,
            "bad_host",
        ),
        (
            "the page (and its token) read by a rebound page",
            request(get.clone(), &page, &[rebound_host]),
            misdirected,
            "bad_host",
        ),
        (
            "a total read by another site's script",
            request(get.clone(), &total, &[foreign, cross_site]),
            forbidden,
            "cross_origin",
        ),
    ];
    for (what, request, status, code) in cases {
        refused(what, request, status, code, &demo).await;
    }

    // The page's own requests: the endpoints, by any loopback name, then a
    // seal and its total.
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let listed: Value = http
            .get(page.join("/api/endpoints").unwrap())
            .header("host", &host)
            .header("sec-fetch-site", "same-origin")
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(listed["endpoints"][0]["waiting"], json!([3, 3]), "{listed}");
    }
    let answer = request(post, &seal, &[json, own_origin, same_origin, with_token])
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let sealed: Value = answer.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{sealed}");
    assert_eq!(sealed["count"], 3, "{sealed}");
    assert_eq!(demo.batches("demo").await, [1, 1]);
    let combined: Value = http
        .get(total)
        .header("origin", &own)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(combined["count"], 3, "{combined}");
    drop(dashboard);
}
