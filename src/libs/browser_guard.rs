//! What keeps a web page from using reborn's HTTP servers (the dashboard, the
//! proxy's admin port, logic's push API) through the browser of someone who
//! can reach them.
//!
//! A browser sends a page's cross-origin `POST` without asking first when it
//! has no body or a `text/plain` one, and it sends the page's `Origin` with
//! it. So [`same_origin`], on every HTTP server (`Listener::serve_http`
//! serves them all), refuses a request whose `Origin` names another site than its `Host` (and
//! the opaque `null` origin of sandboxed frames and files): a page elsewhere
//! could otherwise set a proxy offline, start a rebalance, change a log level
//! or push to every user. Tools (curl, `reborn admin`, Prometheus, business
//! backends) send no `Origin` and are not affected; the dashboard's own page
//! is same-origin.
//!
//! A page can also make its own name resolve to 127.0.0.1 (DNS rebinding), and
//! then it is same-origin. The dashboard without a token, which serves only
//! loopback addresses, therefore also answers only to a `Host` that is an IP
//! address or `localhost` ([`literal_host_only`]).

use std::net::IpAddr;

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Refuses a request from a page of another origin (see the module docs).
pub async fn same_origin(req: Request, next: Next) -> Response {
    if let Some(refusal) = cross_origin(req.headers()) {
        return (StatusCode::FORBIDDEN, refusal).into_response();
    }
    next.run(req).await
}

/// Refuses a request whose `Host` is a name other than `localhost`.
pub async fn literal_host_only(req: Request, next: Next) -> Response {
    if let Some(refusal) = named_host(req.headers()) {
        return (StatusCode::FORBIDDEN, refusal).into_response();
    }
    next.run(req).await
}

/// Why a request with `headers` is cross-origin, if it is.
fn cross_origin(headers: &HeaderMap) -> Option<String> {
    let origin = headers.get(header::ORIGIN)?;
    let origin = origin.to_str().unwrap_or("");
    let site = origin.split_once("://").map(|(_, site)| site);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (site, host) {
        (Some(site), Some(host)) if site.eq_ignore_ascii_case(host) => None,
        _ => Some(format!(
            "refused: a request from a page of another origin ({origin}); tools send no Origin header"
        )),
    }
}

/// Why a request with `headers` names its host, if it does.
fn named_host(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().unwrap_or("");
    let name = match host.rsplit_once(':') {
        // `[::1]:18087`, `127.0.0.1:18087`, `localhost:18087`.
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    if name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok() {
        return None;
    }
    Some(format!(
        "refused: Host {host:?}; a dashboard without a token answers only to an IP address or localhost (a page can make any name point here); set [auth] token to use a name"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_a_page_of_another_origin_is_refused() {
        let host = (header::HOST, "127.0.0.1:18087");
        assert!(
            cross_origin(&headers(std::slice::from_ref(&host))).is_none(),
            "a tool"
        );
        let own = (header::ORIGIN, "http://127.0.0.1:18087");
        assert!(
            cross_origin(&headers(&[host.clone(), own])).is_none(),
            "the dashboard's page"
        );
        for other in ["http://evil.example", "http://127.0.0.1:8080", "null", "garbage"] {
            let h = headers(&[host.clone(), (header::ORIGIN, other)]);
            assert!(cross_origin(&h).is_some(), "{other}");
        }
    }

    #[test]
    fn a_named_host_is_refused_but_addresses_and_localhost_pass() {
        for ok in [
            "127.0.0.1:18087",
            "[::1]:18087",
            "localhost:18087",
            "LOCALHOST",
            "10.0.0.5",
        ] {
            let h = headers(&[(header::HOST, ok)]);
            assert!(named_host(&h).is_none(), "{ok}");
        }
        for bad in ["evil.example:18087", "evil.example", "127.0.0.1.nip.io:18087"] {
            let h = headers(&[(header::HOST, bad)]);
            assert!(named_host(&h).is_some(), "{bad}");
        }
    }
}
