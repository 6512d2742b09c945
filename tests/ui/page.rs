//! The browser of `tests/ui.rs`: headless Chromium driven over WebDriver by
//! its own `chromedriver` on a free port, opened on a dashboard, with the
//! helpers the tests use to look at the page (`js`, `until`, `errors`) and to
//! act on it as an operator would (`click`, `fill`, `confirm`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::common::{GuardedChild, eventually, free_port, spawn_guarded};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long a page may take to show a change (a refresh is ~1 s; a
/// migration or promote takes a few seconds on a busy machine).
pub const SHOW: Duration = Duration::from_secs(30);

/// Browsers at once: each is a few hundred MB and this machine has two cores.
static BROWSERS: Semaphore = Semaphore::const_new(2);

/// True when the browser tests can run; otherwise says so loudly, and fails
/// under CI, where skipping would hide that nothing was tested.
pub fn browser_installed() -> bool {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return true;
    }
    let why = format!("{CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the browser tests must run in CI: {why}"
    );
    eprintln!("\n\n********************************************************************");
    eprintln!("*** SKIPPED: the web UI browser tests did not run: {why}");
    eprintln!("*** scripts/install-deps.sh installs them.");
    eprintln!("********************************************************************\n");
    false
}

/// One headless Chromium on a page of the dashboard, with its chromedriver.
pub struct Page {
    pub client: Client,
    pub base: String,
    _driver: GuardedChild,
    _profile: tempfile::TempDir,
    _permit: SemaphorePermit<'static>,
}

impl Page {
    /// Opens the dashboard at `dashboard` (`host:port`) once it leads; `None`
    /// when the browser is not installed (see [`browser_installed`]).
    pub async fn open(dashboard: &str) -> Option<Page> {
        if !browser_installed() {
            return None;
        }
        wait_leader(dashboard).await;
        Some(Page::start(dashboard).await)
    }

    /// Starts the browser on `dashboard`, leading or not.
    pub async fn start(dashboard: &str) -> Page {
        let permit = BROWSERS.acquire().await.expect("browser semaphore");
        let port = free_port();
        let driver = spawn_guarded(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let driver_addr = format!("127.0.0.1:{port}");
        eventually("chromedriver listens", Duration::from_secs(20), || {
            let addr = driver_addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
        })
        .await;
        let profile = tempfile::tempdir().expect("profile dir");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://{driver_addr}"))
            .await
            .expect("a Chromium session");
        let page = Page {
            client,
            base: format!("http://{dashboard}"),
            _driver: driver,
            _profile: profile,
            _permit: permit,
        };
        page.resize(1280).await;
        page
    }

    /// Sets the window `width` px wide.
    pub async fn resize(&self, width: u32) {
        self.client.set_window_size(width, 900).await.expect("resize");
    }

    /// Shows view `name` and waits until it has drawn data from the API.
    pub async fn view(&self, name: &str) {
        self.client
            .goto(&format!("{}/#{name}", self.base))
            .await
            .expect("goto");
        let script = format!(
            "const v = document.getElementById('view'); \
             return v.dataset.view === '{name}' && v.dataset.loaded === 'true';"
        );
        self.until(&format!("view {name} loads"), &script).await;
    }

    /// Runs `script` (a function body) in the page.
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// The text of each cell of each row matching `rows` (a CSS selector).
    pub async fn rows(&self, rows: &str) -> Value {
        let sel = serde_json::to_string(rows).expect("selector");
        self.js(&format!(
            "return [...document.querySelectorAll({sel})].map(r => [...r.children].map(c => c.textContent));"
        ))
        .await
    }

    /// Waits until `script` returns true.
    pub async fn until(&self, what: &str, script: &str) {
        let deadline = std::time::Instant::now() + SHOW;
        loop {
            if self.js(script).await == Value::Bool(true) {
                return;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "timed out after {SHOW:?}: {what}; page errors: {:?}",
                    self.errors().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What the page recorded as errors (`dashboard/errors.js`).
    pub async fn errors(&self) -> Vec<String> {
        let v = self
            .js("return window.rebornErrors || ['errors.js did not run'];")
            .await;
        serde_json::from_value(v).expect("a list of errors")
    }

    pub async fn assert_no_errors(&self, after: &str) {
        let errors = self.errors().await;
        assert!(errors.is_empty(), "errors in the page after {after}: {errors:?}");
    }

    /// Clicks the element at `css`. Views redraw each second, so an element
    /// found may be replaced before the click lands: find it again then.
    pub async fn click(&self, css: &str) {
        let deadline = std::time::Instant::now() + SHOW;
        loop {
            let clicked = match self.client.find(Locator::Css(css)).await {
                Ok(e) => e.click().await.is_ok(),
                Err(_) => false,
            };
            if clicked {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "cannot click {css}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Types `text` into the (empty) input at `css`.
    pub async fn fill(&self, css: &str, text: &str) {
        let input = self.client.find(Locator::Css(css)).await.expect(css);
        input.clear().await.expect("clear");
        input.send_keys(text).await.expect("type");
    }

    /// Confirms the open confirmation dialog.
    pub async fn confirm(&self) {
        self.until(
            "the confirmation dialog opens",
            "return document.getElementById('confirm-dialog').open;",
        )
        .await;
        self.click("#confirm-ok").await;
    }

    /// Saves a screenshot as `docs/img/dashboard-<name>.png` when
    /// `UPDATE_SCREENSHOTS=1`.
    pub async fn screenshot(&self, name: &str) {
        if !screenshots_wanted() {
            return;
        }
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/img");
        std::fs::create_dir_all(&dir).expect("docs/img");
        std::fs::write(dir.join(format!("dashboard-{name}.png")), png).expect("write screenshot");
    }

    /// Checks that the page recorded no error, then closes the browser.
    pub async fn finish(self, after: &str) {
        self.assert_no_errors(after).await;
        let _ = self.client.close().await;
    }
}

/// True with `UPDATE_SCREENSHOTS=1`: the tests then save their screenshots.
pub fn screenshots_wanted() -> bool {
    std::env::var("UPDATE_SCREENSHOTS").as_deref() == Ok("1")
}

/// Waits until the dashboard at `addr` leads (its API answers).
pub async fn wait_leader(addr: &str) {
    let addr = addr.to_string();
    eventually("the dashboard leads", SHOW, || {
        let addr = addr.clone();
        async move {
            reborn::topo::manager::dashboard::client::get(&addr, "/api/dashboard")
                .await
                .is_ok_and(|r| r.body["role"] == "leader")
        }
    })
    .await;
}
