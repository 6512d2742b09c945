//! The web UI's assets: the files of the top-level `dashboard/` folder,
//! embedded in the binary at build time and served by `reborn dashboard` at
//! `/` on the API's port, so one binary serves everything, offline (no CDN,
//! no Node at build time).
//!
//! The table below is the whole list; a file missing from `dashboard/` fails
//! the build. Every reply forbids content sniffing and carries a content
//! security policy that allows only this origin's scripts (the UI has no
//! inline script), and `no-cache`, so an upgraded binary's UI is picked up at
//! the next load. Imports only libraries.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file.
struct Asset {
    /// Its URL path, which is also its path under `dashboard/`.
    path: &'static str,
    mime: &'static str,
    body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

macro_rules! asset {
    ($path:literal, $mime:expr) => {
        Asset {
            path: concat!("/", $path),
            mime: $mime,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/dashboard/", $path)),
        }
    };
}

/// Every file the UI loads.
const ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("style.css", CSS),
    asset!("errors.js", JS),
    asset!("api.js", JS),
    asset!("app.js", JS),
    asset!("dialog.js", JS),
    asset!("format.js", JS),
    asset!("slotmap.js", JS),
    asset!("views/overview.js", JS),
    asset!("views/slots.js", JS),
    asset!("views/groups.js", JS),
    asset!("views/proxies.js", JS),
    asset!("views/tasks.js", JS),
    asset!("views/rebalance.js", JS),
    asset!("views/push.js", JS),
    asset!("vendor/uPlot.iife.min.js", JS),
    asset!("vendor/uPlot.min.css", CSS),
];

/// Content security policy: scripts and everything else from this origin only;
/// inline styles are allowed because uPlot positions its parts with them.
const CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   frame-ancestors 'none'";

impl Asset {
    fn response(&'static self) -> Response {
        (
            [
                (header::CONTENT_TYPE, self.mime),
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::CONTENT_SECURITY_POLICY, CSP),
            ],
            self.body,
        )
            .into_response()
    }
}

/// The UI's routes: `/` (the page) and one per asset. Reads only, open to
/// anyone who can read the API.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new();
    for asset in ASSETS {
        router = router.route(asset.path, get(move || async move { asset.response() }));
    }
    match ASSETS.first() {
        Some(index) => router.route("/", get(move || async move { index.response() })),
        None => router,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_and_stylesheet_the_page_names_is_served() {
        let index = String::from_utf8_lossy(ASSETS[0].body);
        let served: Vec<&str> = ASSETS.iter().map(|a| a.path).collect();
        let mut named = 0;
        for attr in ["src=\"", "href=\""] {
            for part in index.split(attr).skip(1) {
                let url = part.split('"').next().unwrap_or_default();
                if url.starts_with('#') || url.starts_with("http") {
                    continue;
                }
                named += 1;
                assert!(
                    served.contains(&url),
                    "index.html loads {url}, which is not embedded"
                );
            }
        }
        assert!(named >= 3, "index.html names its scripts and styles");
    }

    #[test]
    fn every_module_import_is_served() {
        let served: Vec<&str> = ASSETS.iter().map(|a| a.path).collect();
        for asset in ASSETS
            .iter()
            .filter(|a| a.mime == JS && !a.path.contains("vendor"))
        {
            let text = String::from_utf8_lossy(asset.body);
            let dir = asset.path.rsplit_once('/').map_or("", |(d, _)| d);
            for part in text.split("from \"").skip(1) {
                let rel = part.split('"').next().unwrap_or_default();
                let url = resolve(dir, rel);
                assert!(served.contains(&url.as_str()), "{} imports {url}", asset.path);
            }
        }
    }

    /// `("/views", "../api.js")` → `/api.js`.
    fn resolve(dir: &str, rel: &str) -> String {
        let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
        for piece in rel.split('/') {
            match piece {
                "." => {}
                ".." => {
                    parts.pop();
                }
                p => parts.push(p),
            }
        }
        format!("/{}", parts.join("/"))
    }
}
