//! Which requests the dashboard answers at all.
//!
//! The dashboard acts with the scientist's token, and any web page the
//! scientist's browser opens can send requests to it: a form posted across
//! origins (CSRF), or a script of a site whose name the attacker re-points at
//! 127.0.0.1 after the page loaded (DNS rebinding), which the browser then
//! treats as same-origin. So every request passes [`Guard::admit`] before it
//! reaches a handler:
//!
//! - its `Host` must name this dashboard: the address it listens on, or
//!   `localhost` / `127.0.0.1` / `[::1]` with its port when it listens on a
//!   loopback or unspecified address (on an unspecified one, also any IP
//!   literal with its port, since rebinding needs a name): `421 bad_host`;
//! - a request that changes something (any method but `GET`, `HEAD` and
//!   `OPTIONS`) must come from the dashboard's own page: `Origin`, when sent,
//!   is that page's origin and `Sec-Fetch-Site`, when sent, is `same-origin`
//!   (`403 cross_origin`); its body is JSON (`415 bad_content_type`), which a
//!   form cannot send and a script of another origin cannot send without a
//!   preflight that is never granted; and it carries the page's token in
//!   `X-Dashboard-Token` (`403 missing_dashboard_token`, `bad_dashboard_token`),
//!   a random value drawn when the process starts and written into the page;
//! - reads of `/api/` are refused likewise to other origins (`Origin` or
//!   `Sec-Fetch-Site` naming another site), so they do no work for one.
//!
//! The page itself and its assets only need the `Host` check: opening the
//! dashboard from a link is a cross-site navigation.

use std::net::{IpAddr, SocketAddr};

use axum::http::uri::Authority;
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, Uri, header};

use super::Problem;

/// The header in which the page sends its token.
pub const TOKEN_HEADER: &str = "x-dashboard-token";

/// What a request must match, fixed when the dashboard starts.
pub(super) struct Guard {
    /// Hosts (lower case; IPv6 in brackets) that name this dashboard, all with
    /// [`Guard::port`].
    hosts: Vec<String>,
    /// The port the dashboard listens on.
    port: u16,
    /// Whether any IP literal names it too: it listens on every address.
    any_ip: bool,
    /// The page's token, hex: a request that changes something must carry it.
    token: String,
}

/// A `Host` or `Origin` authority, compared by host (lower case) and port.
#[derive(Debug, PartialEq)]
struct Named {
    host: String,
    port: u16,
}

impl Guard {
    /// The guard of a dashboard listening on `listen` whose page holds `token`.
    pub(super) fn new(listen: SocketAddr, token: String) -> Guard {
        let ip = listen.ip();
        let mut hosts = vec![bracketed(ip)];
        if ip.is_loopback() || ip.is_unspecified() {
            for name in ["localhost", "127.0.0.1", "[::1]"] {
                if !hosts.iter().any(|h| h == name) {
                    hosts.push(name.to_owned());
                }
            }
        }
        Guard {
            hosts,
            port: listen.port(),
            any_ip: ip.is_unspecified(),
            token,
        }
    }

    /// The page's token.
    pub(super) fn token(&self) -> &str {
        &self.token
    }

    /// Refuses a request this dashboard must not act on, saying why.
    pub(super) fn admit(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<(), Problem> {
        let host = self.host(uri, headers)?;
        let changes = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        if changes || uri.path().starts_with("/api/") {
            self.same_origin(&host, headers, changes)?;
        }
        if changes {
            json_body(headers)?;
            self.has_token(headers)?;
        }
        Ok(())
    }

    /// The request's `Host` (and the authority of an absolute request target,
    /// which HTTP says wins over it), when they name this dashboard.
    fn host(&self, uri: &Uri, headers: &HeaderMap) -> Result<Named, Problem> {
        let hosts: Vec<String> = headers
            .get_all(header::HOST)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        if hosts.len() > 1 {
            // Which of two `Host` headers a proxy would use is anyone's guess.
            return Err(self.bad_host(Some(&hosts.join(", "))));
        }
        let target = uri.authority().map(|a| a.as_str().to_owned());
        let mut named = None;
        for value in hosts.iter().chain(&target) {
            match parse_authority(value) {
                Some(name) if self.names_me(&name) => named = Some(name),
                _ => return Err(self.bad_host(Some(value))),
            }
        }
        named.ok_or_else(|| self.bad_host(None))
    }

    fn names_me(&self, name: &Named) -> bool {
        name.port == self.port
            && (self.hosts.contains(&name.host) || (self.any_ip && ip_literal(&name.host)))
    }

    fn bad_host(&self, given: Option<&str>) -> Problem {
        let mut names: Vec<String> = self
            .hosts
            .iter()
            .filter(|h| !self.any_ip || !ip_literal(h))
            .map(|h| format!("http://{h}:{}/", self.port))
            .collect();
        if self.any_ip {
            names.push(format!(
                "any IP address of this machine with port {}",
                self.port
            ));
        }
        let given = match given {
            Some(value) => format!("the request was addressed to {value:?}"),
            None => "the request named no host".to_owned(),
        };
        Problem::refused(
            StatusCode::MISDIRECTED_REQUEST,
            "bad_host",
            format!(
                "This dashboard answers only at {}, but {given}: a web page of another \
                 site may be trying to reach it through DNS rebinding. Open the dashboard \
                 at one of its own addresses.",
                names.join(", ")
            ),
        )
    }

    /// `Origin` and `Sec-Fetch-Site`, when the browser sent them, must say the
    /// request comes from the page at `host`. A read may also come from no page
    /// at all (`Sec-Fetch-Site: none`: the scientist typed the address).
    fn same_origin(&self, host: &Named, headers: &HeaderMap, changes: bool) -> Result<(), Problem> {
        let own = format!("http://{}:{}", host.host, host.port);
        for origin in headers.get_all(header::ORIGIN) {
            let origin = String::from_utf8_lossy(origin.as_bytes());
            let same = origin
                .strip_prefix("http://")
                .and_then(parse_authority)
                .is_some_and(|o| o == *host);
            if !same {
                return Err(cross_origin(format!(
                    "it came from a page of {origin:?}, and only the dashboard's own page \
                     ({own}) may {}",
                    if changes {
                        "act through it"
                    } else {
                        "read from it"
                    }
                )));
            }
        }
        const SITE: HeaderName = HeaderName::from_static("sec-fetch-site");
        for site in headers.get_all(SITE) {
            let site = String::from_utf8_lossy(site.as_bytes());
            let fine = site == "same-origin" || (!changes && site == "none");
            if !fine {
                return Err(cross_origin(format!(
                    "the browser says it came from a {site} page (Sec-Fetch-Site), and only \
                     the dashboard's own page ({own}) may {}",
                    if changes {
                        "act through it"
                    } else {
                        "read from it"
                    }
                )));
            }
        }
        Ok(())
    }

    fn has_token(&self, headers: &HeaderMap) -> Result<(), Problem> {
        let Some(given) = headers.get(TOKEN_HEADER) else {
            return Err(Problem::refused(
                StatusCode::FORBIDDEN,
                "missing_dashboard_token",
                "Refused: the request lacks the X-Dashboard-Token header that the \
                 dashboard's own page sends. Use the page's buttons (reload the page if \
                 it is old)."
                    .to_owned(),
            ));
        };
        if !same_bytes(given.as_bytes(), self.token.as_bytes()) {
            return Err(Problem::refused(
                StatusCode::FORBIDDEN,
                "bad_dashboard_token",
                "Refused: the X-Dashboard-Token header is not this dashboard's (was it \
                 restarted? reload the page)."
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

fn cross_origin(why: String) -> Problem {
    Problem::refused(
        StatusCode::FORBIDDEN,
        "cross_origin",
        format!("Refused a request from another web page: {why}."),
    )
}

/// A request that changes something must say its body is JSON: a form can send
/// only `text/plain`, `multipart/form-data` and urlencoded bodies, and a script
/// of another origin cannot send JSON without a CORS preflight.
fn json_body(headers: &HeaderMap) -> Result<(), Problem> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let essence = given
        .as_deref()
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if essence.is_some_and(|e| e.eq_ignore_ascii_case("application/json")) {
        return Ok(());
    }
    let given = match &given {
        Some(value) => format!("{value:?}"),
        None => "none".to_owned(),
    };
    Err(Problem::refused(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "bad_content_type",
        format!(
            "Refused: a request that changes something must be JSON (Content-Type: \
             application/json), and this one's Content-Type is {given}."
        ),
    ))
}

/// `host[:port]` (port 80 when left out), refusing user info and anything else
/// an authority of a `Host` header cannot hold.
fn parse_authority(value: &str) -> Option<Named> {
    if value.contains('@') {
        return None;
    }
    let authority: Authority = value.parse().ok()?;
    Some(Named {
        host: authority.host().to_ascii_lowercase(),
        port: authority.port_u16().unwrap_or(80),
    })
}

fn bracketed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

fn ip_literal(host: &str) -> bool {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => host.parse::<std::net::Ipv4Addr>().is_ok(),
    }
}

/// Whether `a == b`, in a time that does not depend on where they differ.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "00ff";

    /// The code `admit` answers (`ok` when it lets the request through).
    fn check(listen: &str, method: Method, uri: &str, headers: &[(&str, &str)], expected: &str) {
        let guard = Guard::new(listen.parse().unwrap(), TOKEN.to_owned());
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let uri: Uri = uri.parse().unwrap();
        let code = match guard.admit(&method, &uri, &map) {
            Ok(()) => "ok".to_owned(),
            Err(problem) => problem.code,
        };
        assert_eq!(code, expected, "{listen} {method} {uri} {headers:?}");
    }

    fn read(listen: &str, host: &str, expected: &str) {
        check(
            listen,
            Method::GET,
            "/api/endpoints",
            &[("host", host)],
            expected,
        );
    }

    #[test]
    fn the_host_must_name_the_dashboard() {
        for host in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LocalHost:8080",
            "[::1]:8080",
        ] {
            read("127.0.0.1:8080", host, "ok");
        }
        for host in [
            "attacker.example:8080",
            "127.0.0.1:8081",
            "127.0.0.1",
            "localhost",
            "localhost.:8080",
            "user@127.0.0.1:8080",
            "192.168.1.5:8080",
            "",
        ] {
            read("127.0.0.1:8080", host, "bad_host");
        }
        // Port 80 may be left out.
        read("127.0.0.1:80", "localhost", "ok");
        // On another address: that address only.
        read("192.168.1.5:8080", "192.168.1.5:8080", "ok");
        read("192.168.1.5:8080", "localhost:8080", "bad_host");
        read("[::1]:8080", "127.0.0.1:8080", "ok");
        // On every address: any IP literal, never another name.
        read("0.0.0.0:8080", "192.168.1.5:8080", "ok");
        read("[::]:8080", "[fe80::1]:8080", "ok");
        read("0.0.0.0:8080", "localhost:8080", "ok");
        read("0.0.0.0:8080", "attacker.example:8080", "bad_host");
        // No Host, two of them, or an absolute target naming another host.
        check("127.0.0.1:8080", Method::GET, "/", &[], "bad_host");
        check(
            "127.0.0.1:8080",
            Method::GET,
            "/",
            &[("host", "127.0.0.1:8080"), ("host", "127.0.0.1:8080")],
            "bad_host",
        );
        check(
            "127.0.0.1:8080",
            Method::GET,
            "http://attacker.example:8080/",
            &[("host", "127.0.0.1:8080")],
            "bad_host",
        );
        check(
            "127.0.0.1:8080",
            Method::GET,
            "http://127.0.0.1:8080/",
            &[("host", "127.0.0.1:8080")],
            "ok",
        );
    }

    fn post(headers: &[(&str, &str)], expected: &str) {
        let mut all = vec![("host", "127.0.0.1:8080")];
        all.extend_from_slice(headers);
        check(
            "127.0.0.1:8080",
            Method::POST,
            "/api/endpoints/demo/seal",
            &all,
            expected,
        );
    }

    #[test]
    fn a_change_needs_the_own_origin_json_and_the_token() {
        let json = ("content-type", "application/json");
        let token = (TOKEN_HEADER, TOKEN);
        let own = ("origin", "http://127.0.0.1:8080");
        post(&[json, token], "ok");
        post(&[json, token, own, ("sec-fetch-site", "same-origin")], "ok");
        post(
            &[("content-type", "Application/JSON; charset=utf-8"), token],
            "ok",
        );
        for origin in [
            "http://attacker.example",
            "http://localhost:8080",
            "http://127.0.0.1:8081",
            "https://127.0.0.1:8080",
            "null",
        ] {
            post(&[json, token, ("origin", origin)], "cross_origin");
        }
        for site in ["cross-site", "same-site", "none"] {
            post(&[json, token, ("sec-fetch-site", site)], "cross_origin");
        }
        post(&[("content-type", "text/plain"), token], "bad_content_type");
        post(&[token], "bad_content_type");
        post(&[json], "missing_dashboard_token");
        post(&[json, (TOKEN_HEADER, "00fe")], "bad_dashboard_token");
        post(&[json, (TOKEN_HEADER, "00ff00")], "bad_dashboard_token");
        // The Host check comes first.
        check(
            "127.0.0.1:8080",
            Method::POST,
            "/api/endpoints/demo/seal",
            &[("host", "attacker.example:8080"), json, token],
            "bad_host",
        );
    }

    #[test]
    fn reads_of_the_api_are_refused_to_other_sites_only() {
        let host = ("host", "127.0.0.1:8080");
        let get = |path: &str, headers: &[(&str, &str)], expected: &str| {
            let mut all = vec![host];
            all.extend_from_slice(headers);
            check("127.0.0.1:8080", Method::GET, path, &all, expected);
        };
        get("/api/endpoints/demo/total", &[], "ok");
        get(
            "/api/endpoints/demo/total",
            &[("sec-fetch-site", "same-origin")],
            "ok",
        );
        get("/api/endpoints", &[("sec-fetch-site", "none")], "ok");
        get(
            "/api/endpoints/demo/total",
            &[("origin", "http://attacker.example")],
            "cross_origin",
        );
        get(
            "/api/endpoints/demo/total",
            &[("sec-fetch-site", "cross-site")],
            "cross_origin",
        );
        // The page may be opened from a link.
        get("/", &[("sec-fetch-site", "cross-site")], "ok");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_bytes(b"abc", b"abc"));
        assert!(!same_bytes(b"abc", b"abd"));
        assert!(!same_bytes(b"abc", b"ab"));
        assert!(same_bytes(b"", b""));
    }
}
