//! The `guardian` command line end to end, run as a user runs it: the built
//! binary starts `guardian dev` (two share servers with the development issuer),
//! mints tokens with `guardian token`, creates endpoints, submits 1,000 random
//! measurements from a file, collects, and the printed JSON is compared with the
//! plain computation over the measurements, for `sum` and `histogram`. Then the
//! client-side errors a user meets: a wrong or missing token, a server down, an
//! unknown endpoint, a measurement the plugin rejects, too small a batch.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::Rng as _;
use serde_json::{Value, json};
use tempfile::TempDir;

#[path = "common/dev.rs"]
mod dev;

use dev::{Dev, GUARDIAN, free_base_port, ok, run, text};

const MEASUREMENTS: usize = 1000;
const COLORS: [&str; 4] = ["red", "green", "blue", "yellow"];

/// Starts `guardian dev` and checks that its banner shows the next three
/// commands to try, with the client commands.
fn start_dev() -> Dev {
    let dev = Dev::start();
    let banner = dev.banner().join("\n");
    for next in [
        "guardian endpoint list",
        "guardian submit demo --file -",
        "guardian collect demo",
    ] {
        assert!(banner.contains(next), "{next:?} in the banner:\n{banner}");
    }
    dev
}

/// Stops `guardian dev` with SIGTERM, as Ctrl-C would: it exits cleanly and
/// says it is stopping.
fn stop_dev(dev: Dev) {
    let rest = dev.stop();
    assert!(
        rest.iter().any(|l| l.contains("stopping")),
        "guardian dev said it was stopping: {rest:?}"
    );
}

/// Asserts failure and returns stderr.
#[track_caller]
fn fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure\nstdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

#[track_caller]
fn contains(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "expected {needle:?} in:\n{haystack}"
    );
}

/// `collect --json` prints exactly one JSON object on stdout.
#[track_caller]
fn collected(out: &Output) -> Value {
    let stdout = ok(out);
    let value: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("collect --json printed no single JSON value ({e}):\n{stdout}"));
    assert!(value.is_object(), "{value}");
    value
}

fn write_lines(dir: &Path, name: &str, lines: &[String]) -> String {
    let path = dir.join(name);
    // A blank line in the middle: skipped, as the help says.
    let mut body = String::new();
    for (i, line) in lines.iter().enumerate() {
        body.push_str(line);
        body.push('\n');
        if i == lines.len() / 2 {
            body.push('\n');
        }
    }
    std::fs::write(&path, body).expect("writing measurements");
    path.to_str().expect("a UTF-8 path").to_owned()
}

#[test]
fn every_party_uses_the_command_line_end_to_end() {
    let dev = start_dev();
    let developer = dev.mint_token("developer");
    let user = dev.mint_token("user");
    let scientist = dev.mint_token("scientist");
    let dir = dev.dir().to_owned();

    help_shows_examples(&dev);

    // Developer: two endpoints on every server, the second run is a no-op.
    let out = ok(&dev.client(
        &developer,
        &[
            "endpoint",
            "create",
            "sum3",
            "--plugin",
            "sum",
            "--params",
            r#"{"length": 3}"#,
            "--min-batch",
            "10",
        ],
    ));
    assert_eq!(out.matches(": created").count(), 2, "{out}");
    let out = ok(&dev.client(
        &developer,
        &[
            "endpoint",
            "create",
            "sum3",
            "--plugin",
            "sum",
            "--params",
            r#"{"length": 3}"#,
            "--min-batch",
            "10",
        ],
    ));
    assert_eq!(out.matches(": already there").count(), 2, "{out}");
    let buckets = serde_json::to_string(&json!({"buckets": COLORS})).unwrap();
    ok(&dev.client(
        &developer,
        &[
            "endpoint",
            "create",
            "colors",
            "--plugin",
            "histogram",
            "--params",
            &buckets,
            "--min-batch",
            "5",
        ],
    ));
    let conflict = fails(&dev.client(
        &developer,
        &["endpoint", "create", "colors", "--plugin", "count"],
    ));
    contains(&conflict, "endpoint_conflict");
    let list = ok(&dev.client(&scientist, &["endpoint", "list"]));
    for name in ["demo", "sum3", "colors"] {
        contains(&list, name);
    }

    // User: 1,000 random measurements each, from files.
    let mut rng = rand::rng();
    let vectors: Vec<[u64; 3]> = (0..MEASUREMENTS)
        .map(|_| std::array::from_fn(|_| rng.random_range(0..1_000_000)))
        .collect();
    let file = write_lines(
        &dir,
        "sums.jsonl",
        &vectors
            .iter()
            .map(|v| serde_json::to_string(v).unwrap())
            .collect::<Vec<_>>(),
    );
    let out = ok(&dev.client(&user, &["submit", "sum3", "--file", &file]));
    contains(&out, "sent 1000, stored 1000, duplicates 0, failed 0");
    // Buckets by label or by index, both as the histogram plugin allows.
    let picks: Vec<usize> = (0..MEASUREMENTS)
        .map(|_| rng.random_range(0..COLORS.len()))
        .collect();
    let file = write_lines(
        &dir,
        "colors.jsonl",
        &picks
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if i % 3 == 0 {
                    b.to_string()
                } else {
                    format!("{:?}", COLORS[b])
                }
            })
            .collect::<Vec<_>>(),
    );
    let out = ok(&dev.client(&user, &["submit", "colors", "--file", &file]));
    contains(&out, "sent 1000, stored 1000, duplicates 0, failed 0");

    // Scientist: seal, combine, compare with the plain computation.
    let mut sums = [0u64; 3];
    for v in &vectors {
        for (s, x) in sums.iter_mut().zip(v) {
            *s += x;
        }
    }
    let result = collected(&dev.client(&scientist, &["collect", "sum3", "--json"]));
    assert_eq!(result["endpoint"], "sum3");
    assert_eq!(result["count"], MEASUREMENTS);
    assert_eq!(result["result"], json!(sums));
    let batch_id = result["batch_id"].as_str().unwrap();
    assert!(
        batch_id.len() == 32 && batch_id.chars().all(|c| c.is_ascii_hexdigit()),
        "{batch_id}"
    );
    assert_eq!(result.as_object().unwrap().len(), 4, "{result}");

    let mut counts = [0u64; COLORS.len()];
    for &b in &picks {
        counts[b] += 1;
    }
    let result = collected(&dev.client(&scientist, &["collect", "colors", "--json"]));
    assert_eq!(result["count"], MEASUREMENTS);
    assert_eq!(
        result["result"],
        json!({"buckets": COLORS, "counts": counts})
    );

    // The total over every released batch, and the table for people.
    let total = collected(&dev.client(&scientist, &["collect", "sum3", "--total", "--json"]));
    assert_eq!(
        total,
        json!({"endpoint": "sum3", "batches": 1, "count": MEASUREMENTS, "result": sums})
    );
    let table = ok(&dev.client(&scientist, &["collect", "colors", "--total"]));
    contains(&table, "endpoint colors, total of 1 batch: 1000 reports");
    contains(&table, &format!("{:<7}  {:>6}\n", "red", counts[0]));

    robust_endpoints_reject_a_tampered_report(&dev, &developer, &user, &scientist);

    // Nothing left to seal: said in words, with the counts.
    let error = fails(&dev.client(&scientist, &["collect", "sum3"]));
    contains(&error, "only 0 reports are held by every server");
    contains(&error, "needs at least 10 per batch");

    client_errors_are_clear(&dev, &developer, &user, &scientist);
    stop_dev(dev);
}

/// A robust endpoint through the command line: honest reports from a file, one
/// report printed by `guardian shard`, tampered with and posted by hand; the
/// collected result is the honest reports', and says one was rejected.
fn robust_endpoints_reject_a_tampered_report(
    dev: &Dev,
    developer: &str,
    user: &str,
    scientist: &str,
) {
    let buckets = json!({"buckets": COLORS}).to_string();
    ok(&dev.client(
        developer,
        &[
            "endpoint",
            "create",
            "votes",
            "--plugin",
            "prio3-histogram",
            "--params",
            &buckets,
            "--min-batch",
            "3",
        ],
    ));
    let picks = [0, 1, 1, 2, 3, 3, 3];
    let lines: Vec<String> = picks.iter().map(|&b| format!("{:?}", COLORS[b])).collect();
    let file = write_lines(dev.dir(), "votes.jsonl", &lines);
    let out = ok(&dev.client(user, &["submit", "votes", "--file", &file]));
    contains(&out, "sent 7, stored 7, duplicates 0, failed 0");

    let printed = ok(&dev.client(user, &["shard", "votes", "--value", r#""red""#]));
    let report: Value = serde_json::from_str(printed.trim()).expect("shard prints one JSON object");
    let (id, public_share) = (&report["report_id"], &report["public_share"]);
    assert!(id.as_str().is_some_and(|id| id.len() == 32), "{report}");
    assert!(
        public_share.is_string(),
        "a Prio3 histogram has a public share: {report}"
    );
    let mut shares: Vec<Vec<u8>> = report["shares"]
        .as_array()
        .expect("shares is a list")
        .iter()
        .map(|s| {
            BASE64
                .decode(s.as_str().unwrap_or_default())
                .expect("base64 shares")
        })
        .collect();
    assert_eq!(shares.len(), 2, "{report}");
    shares[1][0] ^= 0x01;
    let servers: Vec<&str> = dev.servers().split(',').collect();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    for (index, share) in shares.iter().enumerate() {
        let posted = runtime.block_on(async {
            reqwest::Client::new()
                .post(format!("{}/api/v1/endpoints/votes/reports", servers[index]))
                .bearer_auth(user)
                .json(&json!({
                    "report_id": id,
                    "share": BASE64.encode(share),
                    "public_share": public_share,
                }))
                .send()
                .await
                .expect("the server answers")
                .status()
        });
        assert_eq!(posted, reqwest::StatusCode::CREATED, "server {index}");
    }

    let result = collected(&dev.client(scientist, &["collect", "votes", "--json"]));
    assert_eq!(result["count"], picks.len(), "{result}");
    assert_eq!(result["rejected"], 1, "{result}");
    let mut counts = [0u64; COLORS.len()];
    for &b in &picks {
        counts[b] += 1;
    }
    assert_eq!(
        result["result"],
        json!({"buckets": COLORS, "counts": counts})
    );
    let table = ok(&dev.client(scientist, &["collect", "votes", "--total"]));
    contains(
        &table,
        "7 reports (1 more rejected: their validity proofs failed)",
    );
}

fn help_shows_examples(dev: &Dev) {
    for command in [
        &["plugin", "upload"][..],
        &["plugin", "list"],
        &["endpoint", "create"],
        &["endpoint", "list"],
        &["submit"],
        &["collect"],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let help = ok(&run(dev.dir(), &args, &[]));
        contains(&help, "Example: guardian ");
        contains(&help, "--servers");
        contains(&help, "GUARDIAN_SERVERS");
        contains(&help, "GUARDIAN_TOKEN");
    }
}

fn client_errors_are_clear(dev: &Dev, developer: &str, user: &str, scientist: &str) {
    // A measurement the plugin rejects never leaves the machine.
    let error = fails(&dev.client(user, &["submit", "colors", "--value", r#""purple""#]));
    contains(&error, "invalid_measurement");
    contains(
        &error,
        r#"unknown bucket "purple": expected a bucket label ("red", "green", "blue", "yellow")"#,
    );
    // Said once, in the plugin's words (no Rust type, no repeated code).
    assert_eq!(error.matches("invalid_measurement").count(), 1, "{error}");
    let error = fails(&dev.client(user, &["submit", "colors", "--value", "[2]"]));
    contains(&error, "expected a bucket label");
    contains(&error, "got [2]");

    // A file with one bad line: the rest is posted, the summary counts by reason.
    let file = write_lines(
        dev.dir(),
        "mixed.jsonl",
        &[r#""red""#, r#""pink""#, "2", r#""blue""#].map(String::from),
    );
    let out = dev.client(user, &["submit", "colors", "--file", &file]);
    fails(&out);
    let summary = text(&out.stdout);
    contains(&summary, "sent 4, stored 3, duplicates 0, failed 1");
    contains(
        &summary,
        r#"line 2 ("pink"): invalid_measurement: unknown bucket "pink""#,
    );

    // One measurement.
    let out = ok(&dev.client(user, &["submit", "sum3", "--value", "[1, 2, 3]"]));
    contains(&out, "stored on all 2 servers");

    // Tokens: none, garbage, and one without the role.
    let error = fails(&run(
        dev.dir(),
        &["submit", "sum3", "--value", "[1, 2, 3]"],
        &[("GUARDIAN_SERVERS", dev.servers())],
    ));
    contains(&error, "needs a token");
    contains(&error, "server 0");
    let error = fails(&dev.client("not-a-token", &["submit", "sum3", "--value", "[1, 2, 3]"]));
    contains(&error, "refused the token");
    let error = fails(&dev.client(scientist, &["submit", "sum3", "--value", "[1, 2, 3]"]));
    contains(&error, "role");

    // An unknown endpoint.
    let error = fails(&dev.client(user, &["submit", "nope", "--value", "1"]));
    contains(&error, "there is no endpoint \"nope\" on server 0");

    // A server down: which one, and where.
    let down = format!("http://127.0.0.1:{}", free_base_port());
    let servers = format!(
        "{},{down}",
        dev.servers().split(',').next().expect("a server URL")
    );
    let error = fails(&run(
        dev.dir(),
        &[
            "submit",
            "sum3",
            "--value",
            "[1, 2, 3]",
            "--servers",
            &servers,
        ],
        &[("GUARDIAN_TOKEN", user)],
    ));
    contains(&error, &format!("server 1 ({down}) could not be reached"));

    // Servers in the wrong order, or too few of them.
    let reversed: Vec<&str> = dev.servers().split(',').rev().collect();
    let error = fails(&run(
        dev.dir(),
        &[
            "collect",
            "sum3",
            "--total",
            "--servers",
            &reversed.join(","),
        ],
        &[("GUARDIAN_TOKEN", scientist)],
    ));
    contains(&error, "server-index order");
    let error = fails(&run(
        dev.dir(),
        &[
            "submit",
            "sum3",
            "--value",
            "1",
            "--servers",
            &reversed[1..].join(","),
        ],
        &[("GUARDIAN_TOKEN", user)],
    ));
    contains(&error, "at least two share servers");

    // Plugins: an upload lands on every server once; a component of another
    // world is refused on every server with the reason.
    let fixtures = Path::new(env!("GUARDIAN_FIXTURES_DIR"));
    let plugin = fixtures.join("fixture_hostile.wasm");
    let plugin = plugin.to_str().expect("a UTF-8 path");
    let out = ok(&dev.client(developer, &["plugin", "upload", plugin]));
    assert_eq!(out.matches(": created").count(), 2, "{out}");
    let out = ok(&dev.client(developer, &["plugin", "upload", plugin]));
    assert_eq!(out.matches(": already there").count(), 2, "{out}");
    let other = fixtures.join("fixture_other_world.wasm");
    let error = fails(&dev.client(
        developer,
        &["plugin", "upload", other.to_str().expect("a UTF-8 path")],
    ));
    contains(&error, "failed on every server");
    contains(&error, "invalid_plugin");
    let list = ok(&dev.client(developer, &["plugin", "list"]));
    contains(&list, "histogram");
    contains(&list, "uploaded");

    plugins_by_version_and_failures_by_line(dev, developer, user);
}

/// The version `guardian plugin list` shows for the plugin named `name`.
fn listed_version(dev: &Dev, developer: &str, name: &str) -> String {
    let list = ok(&dev.client(developer, &["plugin", "list"]));
    list.lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(name)).then(|| words.next().map(str::to_owned))?
        })
        .unwrap_or_else(|| panic!("no {name} in the plugin list:\n{list}"))
}

/// Plugins named by `name@version` on the command line, an unknown version
/// answered with what the servers hold; `--value -3`; a file of several
/// different bad lines, each listed with its own reason; `--errors FILE`.
fn plugins_by_version_and_failures_by_line(dev: &Dev, developer: &str, user: &str) {
    let mean = format!("mean@{}", listed_version(dev, developer, "mean"));
    let out = ok(&dev.client(
        developer,
        &[
            "endpoint",
            "create",
            "signed",
            "--plugin",
            &mean,
            "--min-batch",
            "10",
        ],
    ));
    assert_eq!(out.matches(": created").count(), 2, "{out}");
    let hostile =
        std::fs::read(Path::new(env!("GUARDIAN_FIXTURES_DIR")).join("fixture_hostile.wasm"))
            .expect("reading the hostile fixture");
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&hostile));
    let version = listed_version(dev, developer, "hostile");
    let error = fails(&dev.client(
        developer,
        &["endpoint", "create", "h", "--plugin", "hostile@99.0.0"],
    ));
    contains(&error, "unknown_plugin");
    contains(&error, &format!("hostile@{version} (digest {digest})"));

    // Negative measurements, both ways of writing the option.
    for args in [&["--value", "-3"][..], &["--value=-3"]] {
        let mut command = vec!["submit", "signed"];
        command.extend(args);
        let out = ok(&dev.client(user, &command));
        contains(&out, "stored on all 2 servers");
    }
    let out = ok(&dev.client(user, &["shard", "signed", "--value", "-3"]));
    contains(&out, "\"shares\"");

    // Several different bad lines: each listed with its own reason.
    let lines = [
        r#""red""#,
        r#""pink""#,
        "[2]",
        "7",
        r#"{"a": 1}"#,
        "not json",
        "-1",
        r#""blue""#,
    ];
    let file = dev.dir().join("bad.jsonl");
    std::fs::write(&file, lines.join("\n")).expect("writing measurements");
    let file = file.to_str().expect("a UTF-8 path");
    let out = dev.client(user, &["submit", "colors", "--file", file]);
    fails(&out);
    let summary = text(&out.stdout);
    contains(&summary, "sent 8, stored 2, duplicates 0, failed 6");
    let mut reasons = Vec::new();
    for (number, value) in lines.iter().enumerate().skip(1).take(6) {
        let start = format!("  line {} ({value}): ", number + 1);
        let reason = summary
            .lines()
            .find_map(|l| l.strip_prefix(start.as_str()))
            .unwrap_or_else(|| panic!("no {start:?} in:\n{summary}"));
        reasons.push(reason.to_owned());
    }
    reasons.sort();
    reasons.dedup();
    assert_eq!(reasons.len(), 6, "six different reasons: {reasons:#?}");
    contains(
        &summary,
        r#"line 2 ("pink"): invalid_measurement: unknown bucket "pink""#,
    );

    // --errors FILE: every failed line as a JSON object, the counts on screen.
    let errors = dev.dir().join("errors.jsonl");
    let errors_arg = errors.to_str().expect("a UTF-8 path");
    let out = dev.client(
        user,
        &["submit", "colors", "--file", file, "--errors", errors_arg],
    );
    fails(&out);
    let summary = text(&out.stdout);
    contains(&summary, "failed 6");
    contains(&summary, &format!("is in {errors_arg}"));
    let written = std::fs::read_to_string(&errors).expect("reading the --errors file");
    let failures: Vec<Value> = written
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(
        failures
            .iter()
            .map(|f| f["line"].as_u64().expect("a line number"))
            .collect::<Vec<_>>(),
        vec![2, 3, 4, 5, 6, 7],
        "{written}"
    );
    for (failure, value) in failures.iter().zip(&lines[1..7]) {
        assert_eq!(failure["value"], *value, "{failure}");
        assert_eq!(
            failure["server"],
            Value::Null,
            "refused before posting: {failure}"
        );
        assert!(
            failure["code"].as_str().is_some_and(|c| !c.is_empty()),
            "{failure}"
        );
        assert!(
            failure["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{failure}"
        );
    }
    // Many failures: the counts, the first twenty, and where to get the rest.
    let many: Vec<String> = (0..25).map(|i| format!("\"no{i}\"")).collect();
    let file = dev.dir().join("many.jsonl");
    std::fs::write(&file, many.join("\n")).expect("writing measurements");
    let out = dev.client(
        user,
        &[
            "submit",
            "colors",
            "--file",
            file.to_str().expect("a UTF-8 path"),
        ],
    );
    fails(&out);
    let summary = text(&out.stdout);
    contains(&summary, "  25 failed: invalid_measurement\n");
    contains(&summary, "  line 20 (\"no19\"): ");
    assert!(!summary.contains("line 21 "), "{summary}");
    contains(
        &summary,
        "… and 5 more: give --errors FILE to get every failed line",
    );
}

/// A server that answers listings with terminal escapes in every word (as a
/// compromised server, or one holding a plugin stored before uploads were
/// checked, would): the command line prints them as visible text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_cannot_drive_the_operators_terminal() {
    const ESCAPES: &str = "\u{1b}[2K\r\u{1b}]0;owned\u{7}\u{9b}31m";
    let plugins = json!({"plugins": [{
        "digest": "ab".repeat(32), "name": format!("sum{ESCAPES}"),
        "version": ESCAPES, "description": ESCAPES, "builtin": false,
        "approved": true, "size": 1,
    }], "next": null});
    let app = axum::Router::new()
        .route(
            "/api/v1/plugins",
            axum::routing::get(move || async move { axum::Json(plugins) }),
        )
        .route(
            "/api/v1/endpoints",
            axum::routing::get(|| async {
                (
                    axum::http::StatusCode::CONFLICT,
                    axum::Json(json!({"error": {"code": "x", "message": format!("bad{ESCAPES}")}})),
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let (listed, failed) = tokio::task::spawn_blocking(move || {
        let env = [("GUARDIAN_SERVERS", url.as_str())];
        (
            run(&path, &["plugin", "list"], &env),
            run(&path, &["endpoint", "list"], &env),
        )
    })
    .await
    .unwrap();
    server.abort();
    let listed = ok(&listed);
    contains(
        &listed,
        "sum\\u001b[2K\\u000d\\u001b]0;owned\\u0007\\u009b31m",
    );
    let failed = fails(&failed);
    contains(&failed, "bad\\u001b[2K");
    for printed in [&listed, &failed] {
        assert!(
            !printed
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{printed:?}"
        );
    }
}

/// A server whose endpoints come in pages of one (as any server's do past 100):
/// `endpoint list` follows `next` to the last page, and stops at a cursor that
/// does not move forward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_are_read_to_their_last_page() {
    let endpoint = |name: &str| {
        json!({
            "name": name, "plugin": "sum", "plugin_digest": "ab".repeat(32),
            "params": {"length": 1}, "min_batch": 2, "config_hash": "cd".repeat(32),
            "created_at": "", "reports": {"unbatched": 0, "batched": 0, "batches": 0}
        })
    };
    let pages = move |after: Option<&str>| match after {
        None => json!({"endpoints": [endpoint("first")], "next": "first"}),
        Some("first") => json!({"endpoints": [endpoint("second")], "next": "second"}),
        Some("second") => json!({"endpoints": [endpoint("third")], "next": "second"}),
        Some(other) => panic!("asked for the page after {other}"),
    };
    let app = axum::Router::new().route(
        "/api/v1/endpoints",
        axum::routing::get(
            move |axum::extract::Query(query): axum::extract::Query<
                std::collections::HashMap<String, String>,
            >| async move { axum::Json(pages(query.get("after").map(String::as_str))) },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let listed = tokio::task::spawn_blocking(move || {
        run(
            &path,
            &["endpoint", "list"],
            &[("GUARDIAN_SERVERS", url.as_str())],
        )
    })
    .await
    .unwrap();
    server.abort();
    let listed = ok(&listed);
    for name in ["first", "second", "third"] {
        contains(&listed, name);
    }
    assert_eq!(listed.lines().count(), 4, "{listed}");
}

/// A command whose reader goes away (`guardian token … | head -c 0`) ends
/// quietly, killed by `SIGPIPE` as Unix tools are, instead of panicking on
/// the broken pipe with a backtrace.
#[test]
fn a_closed_output_ends_a_command_quietly() {
    use std::os::unix::process::ExitStatusExt as _;

    let dir = TempDir::new().expect("temporary folder");
    let issuer = dir.path().join("issuer");
    let issuer = issuer.to_str().expect("UTF-8 path");
    // The issuer's key pair exists first, so the only output is the token.
    ok(&run(
        dir.path(),
        &["token", "--role", "user", "--issuer-dir", issuer],
        &[],
    ));
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let out = Command::new(GUARDIAN)
        .args(["token", "--role", "user", "--issuer-dir", issuer])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("running guardian");
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(13),
        "expected SIGPIPE, got {}: {stderr}",
        out.status
    );
}

/// Sealing by schedule from the command line: an endpoint created with
/// `--seal-at` is sealed by the servers themselves, and a scientist reads it
/// without sealing: `collect --latest` (the newest batch) and `--since TIME`
/// (every batch sealed since).
#[test]
fn scheduled_batches_are_read_without_sealing() {
    let dev = Dev::start();
    let developer = dev.mint_token("developer");
    let user = dev.mint_token("user");
    let scientist = dev.mint_token("scientist");
    let before = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let args = [
        "endpoint",
        "create",
        "every5",
        "--plugin",
        "sum",
        "--params",
        r#"{"length": 2}"#,
        "--min-batch",
        "2",
        "--seal-at",
        "5",
        "--seal-every",
        "1day",
    ];
    let out = ok(&dev.client(&developer, &args));
    assert_eq!(out.matches(": created").count(), 2, "{out}");
    let list = ok(&dev.client(&scientist, &["endpoint", "list"]));
    contains(&list, "every 1day or at 5");
    let bad = fails(&dev.client(
        &developer,
        &[
            "endpoint",
            "create",
            "x",
            "--plugin",
            "sum",
            "--seal-every",
            "1.5s",
        ],
    ));
    contains(&bad, "--seal-every");

    // Nothing released yet: said in words.
    let error = fails(&dev.client(&scientist, &["collect", "every5", "--latest"]));
    contains(&error, "has no released batch yet");

    // The newest batch, once it is not `previous`.
    let latest = |previous: &Value| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let out = dev.client(&scientist, &["collect", "every5", "--latest", "--json"]);
            if out.status.success() {
                let result = collected(&out);
                if result["batch_id"] != *previous {
                    return result;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no new batch sealed by schedule: {}",
                text(&out.stderr)
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    let dir = dev.dir().to_owned();
    let first: Vec<String> = (1..=5).map(|i| format!("[{i}, 1]")).collect();
    let file = write_lines(&dir, "first.jsonl", &first);
    contains(
        &ok(&dev.client(&user, &["submit", "every5", "--file", &file])),
        "stored 5",
    );
    let result = latest(&Value::Null);
    assert_eq!(result["count"], 5, "{result}");
    assert_eq!(result["result"], json!([15, 5]), "{result}");
    assert!(result["batch_id"].is_string(), "{result}");

    let second: Vec<String> = (1..=5).map(|_| "[100, 0]".to_owned()).collect();
    let file = write_lines(&dir, "second.jsonl", &second);
    ok(&dev.client(&user, &["submit", "every5", "--file", &file]));
    let result = latest(&result["batch_id"]);
    assert_eq!(result["count"], 5, "{result}");
    assert_eq!(result["result"], json!([500, 0]), "{result}");

    let since = collected(&dev.client(
        &scientist,
        &["collect", "every5", "--since", &before, "--json"],
    ));
    assert_eq!(since["batches"], 2, "{since}");
    assert_eq!(since["count"], 10, "{since}");
    assert_eq!(since["result"], json!([515, 5]), "{since}");
    let table = ok(&dev.client(&scientist, &["collect", "every5", "--since", &before]));
    contains(&table, "2 batches sealed since");
    let bad = fails(&dev.client(&scientist, &["collect", "every5", "--since", "yesterday"]));
    contains(&bad, "2026-01-31T00:00:00Z");
    stop_dev(dev);
}
