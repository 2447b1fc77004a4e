//! A real headless Chromium driven over the Chrome DevTools Protocol, for tests
//! of web pages: navigate, run JavaScript, click, type, wait for conditions, take
//! screenshots.
//!
//! Needs Debian's `chromium` package (`scripts/test.sh` installs it), or the
//! binary named by `SHARDCRON_CHROMIUM`. A browser that cannot start panics with
//! its stderr. The browser runs in its own process group with a throw-away
//! profile, and is killed (with every process it started) when [`Browser`] is
//! dropped, or when the test process dies.
//!
//! ```no_run
//! # async fn demo() {
//! use std::time::Duration;
//! use shardcron_testkit::browser::Browser;
//! let browser = Browser::launch().await;
//! let page = browser.new_page().await;
//! page.goto("http://127.0.0.1:8080/").await;
//! page.fill("#user", "admin").await;
//! page.click("button[type=submit]").await;
//! page.wait_for("document.title.includes('overview')", Duration::from_secs(10)).await;
//! page.screenshot(std::path::Path::new("/tmp/overview.png")).await;
//! # }
//! ```

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::SinkExt;
use futures_util::stream::{SplitSink, StreamExt};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest wait for one DevTools call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the browser to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Events kept per page (the oldest are dropped past this).
const MAX_EVENTS: usize = 10_000;

/// Window size of new pages.
#[derive(Debug, Clone, Copy)]
pub struct Viewport {
    /// CSS pixels.
    pub width: u32,
    /// CSS pixels.
    pub height: u32,
}

impl Default for Viewport {
    fn default() -> Self {
        Viewport {
            width: 1280,
            height: 860,
        }
    }
}

/// A running headless Chromium.
#[derive(Debug)]
pub struct Browser {
    child: Child,
    ws_base: String,
    browser: Cdp,
    log: Arc<Mutex<String>>,
    viewport: Viewport,
    _profile: TempDir,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Browser {
    /// The Chromium binary: `SHARDCRON_CHROMIUM`, else `chromium`,
    /// `chromium-browser`, `google-chrome` on PATH or in /usr/bin.
    pub fn binary() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("SHARDCRON_CHROMIUM") {
            return Some(PathBuf::from(p));
        }
        ["chromium", "chromium-browser", "google-chrome"]
            .into_iter()
            .find_map(crate::find_binary)
    }

    /// Start a browser with the default viewport; panics (with the browser's
    /// stderr) when it cannot start.
    pub async fn launch() -> Browser {
        Self::launch_with(Viewport::default()).await
    }

    /// Start a browser whose pages have `viewport`.
    pub async fn launch_with(viewport: Viewport) -> Browser {
        let bin = Self::binary().unwrap_or_else(|| {
            panic!(
                "Chromium is not installed: `apt-get install chromium` (scripts/test.sh does), \
                 or point SHARDCRON_CHROMIUM at a Chrome binary"
            )
        });
        let profile = tempfile::Builder::new()
            .prefix("shardcron-chromium-")
            .tempdir()
            .expect("a temporary profile directory");
        let mut cmd = Command::new(&bin);
        cmd.args([
            "--headless=new",
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-features=Translate,MediaRouter,OptimizationHints",
            "--metrics-recording-only",
            "--mute-audio",
            "--hide-scrollbars",
            "--password-store=basic",
            "--use-mock-keychain",
            &format!("--window-size={},{}", viewport.width, viewport.height),
        ]);
        cmd.arg(format!("--user-data-dir={}", profile.path().display()));
        if nix::unistd::geteuid().is_root() {
            // Chromium's sandbox refuses to run as root.
            cmd.arg("--no-sandbox");
        }
        cmd.arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        crate::reap_with_this_process(child.id());

        // Chromium prints "DevTools listening on ws://..." on stderr; keep
        // reading stderr for failure messages (and so the pipe never fills).
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_string());
                }
                let mut l = lock(&sink);
                if l.len() < 1 << 20 {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let fail = |child: &mut Child, why: &str| -> ! {
            let _ = child.kill();
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "Chromium ({}) {why} ({status}); its stderr:\n{}",
                bin.display(),
                lock(&log)
            );
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let browser_ws = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(url) => break url,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    fail(&mut child, "exited before it listened for DevTools")
                }
                Err(_) if Instant::now() > deadline => fail(
                    &mut child,
                    &format!("did not listen for DevTools within {START_TIMEOUT:?}"),
                ),
                Err(_) => {
                    if let Ok(Some(_)) = child.try_wait() {
                        fail(&mut child, "exited before it listened for DevTools")
                    }
                }
            }
        };
        let ws_base = match browser_ws.find("/devtools/") {
            Some(i) => browser_ws[..i].to_string(),
            None => fail(&mut child, &format!("printed a strange URL {browser_ws:?}")),
        };
        let browser = match Cdp::connect(&browser_ws).await {
            Ok(c) => c,
            Err(e) => fail(&mut child, &format!("refused the DevTools connection: {e}")),
        };
        Browser {
            child,
            ws_base,
            browser,
            log,
            viewport,
            _profile: profile,
        }
    }

    /// What the browser wrote to stderr so far.
    pub fn log(&self) -> String {
        lock(&self.log).clone()
    }

    /// A new tab showing `about:blank`.
    pub async fn new_page(&self) -> Page {
        let target = self
            .browser
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await
            .unwrap_or_else(|e| panic!("cannot open a tab: {e}\n{}", self.log()));
        let id = target["targetId"]
            .as_str()
            .expect("a target id")
            .to_string();
        let cdp = Cdp::connect(&format!("{}/devtools/page/{id}", self.ws_base))
            .await
            .unwrap_or_else(|e| panic!("cannot attach to the tab: {e}\n{}", self.log()));
        let page = Page {
            cdp,
            log: self.log.clone(),
        };
        for domain in ["Page", "Runtime", "Log"] {
            page.call(&format!("{domain}.enable"), json!({})).await;
        }
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({
                "width": self.viewport.width,
                "height": self.viewport.height,
                "deviceScaleFactor": 1,
                "mobile": false,
            }),
        )
        .await;
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole process group: the browser and its renderers.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// One DevTools WebSocket connection: calls matched to their answers by id,
/// events kept in order.
struct Cdp {
    sink: tokio::sync::Mutex<Sink>,
    next: AtomicU64,
    pending: Pending,
    events: Arc<Mutex<Vec<Value>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Cdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cdp").finish_non_exhaustive()
    }
}

impl Cdp {
    async fn connect(url: &str) -> Result<Cdp, String> {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let (sink, mut stream) = ws.split();
        let pending: Pending = Arc::default();
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (p, ev) = (pending.clone(), events.clone());
        let reader = tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                if let Some(id) = v.get("id").and_then(Value::as_u64) {
                    if let Some(tx) = lock(&p).remove(&id) {
                        let answer = match v.get("error") {
                            Some(e) => Err(e.to_string()),
                            None => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
                        };
                        let _ = tx.send(answer);
                    }
                } else {
                    let mut e = lock(&ev);
                    if e.len() >= MAX_EVENTS {
                        e.remove(0);
                    }
                    e.push(v);
                }
            }
            // The connection is gone: fail whatever still waits.
            for (_, tx) in lock(&p).drain() {
                let _ = tx.send(Err("the DevTools connection closed".into()));
            }
        });
        Ok(Cdp {
            sink: tokio::sync::Mutex::new(sink),
            next: AtomicU64::new(1),
            pending,
            events,
            reader,
        })
    }

    async fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.sink
            .lock()
            .await
            .send(Message::text(msg))
            .await
            .map_err(|e| format!("{method}: {e}"))?;
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(r)) => r.map_err(|e| format!("{method}: {e}")),
            Ok(Err(_)) => Err(format!("{method}: the DevTools connection closed")),
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(format!("{method}: no answer within {CALL_TIMEOUT:?}"))
            }
        }
    }
}

impl Drop for Cdp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A tab. Selectors are CSS selectors; JavaScript runs in the page.
#[derive(Debug)]
pub struct Page {
    cdp: Cdp,
    log: Arc<Mutex<String>>,
}

/// `text` as a JavaScript string literal.
pub fn js_string(text: &str) -> String {
    Value::from(text).to_string()
}

impl Page {
    /// Call a DevTools method; panics on an error.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        self.cdp
            .call(method, params)
            .await
            .unwrap_or_else(|e| panic!("DevTools call failed: {e}"))
    }

    /// Run `source` in every document this page loads from now on, before the
    /// document's own scripts (to stub a browser API, for example).
    pub async fn add_init_script(&self, source: &str) {
        self.call(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({"source": source}),
        )
        .await;
    }

    /// Load `url` and wait until the document has loaded.
    pub async fn goto(&self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url})).await;
        if let Some(e) = r.get("errorText").and_then(Value::as_str) {
            panic!("cannot load {url}: {e}");
        }
        self.wait_for("document.readyState === 'complete'", CALL_TIMEOUT)
            .await;
    }

    /// Evaluate `expression` (awaiting a promise) and return its value as JSON;
    /// `Err` with the exception when it throws.
    pub async fn try_eval(&self, expression: &str) -> Result<Value, String> {
        let r = self
            .cdp
            .call(
                "Runtime.evaluate",
                json!({
                    "expression": expression,
                    "awaitPromise": true,
                    "returnByValue": true,
                    "userGesture": true,
                }),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            let what = ex["exception"]["description"]
                .as_str()
                .or(ex["text"].as_str())
                .unwrap_or("an exception");
            return Err(what.to_string());
        }
        Ok(r["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// Evaluate `expression`; panics when it throws.
    pub async fn eval(&self, expression: &str) -> Value {
        match self.try_eval(expression).await {
            Ok(v) => v,
            Err(e) => panic!("{expression} threw: {e}\n{}", self.state().await),
        }
    }

    /// The page's URL, its visible text (shortened) and its JavaScript errors:
    /// for failure messages.
    pub async fn state(&self) -> String {
        let page = self
            .try_eval("location.href + '\\n' + (document.body ? document.body.innerText : '')")
            .await
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .unwrap_or_else(|e| format!("(unreadable: {e})"));
        let page: String = page.chars().take(3000).collect();
        let errors = self.js_errors();
        format!(
            "--- page ---\n{page}\n--- JavaScript errors ---\n{}\n--- browser stderr (tail) ---\n{}",
            errors.join("\n"),
            tail_lines(&lock(&self.log), 20, |l| !l.contains("dbus"))
        )
    }

    /// Wait until the JavaScript `condition` is truthy; panics after `timeout`
    /// with the page's state.
    pub async fn wait_for(&self, condition: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let expr = format!("!!({condition})");
        let mut last = String::new();
        loop {
            match self.try_eval(&expr).await {
                Ok(Value::Bool(true)) => return,
                Ok(_) => {}
                // The page may be between documents: try again.
                Err(e) => last = e,
            }
            if Instant::now() > deadline {
                panic!(
                    "not true within {timeout:?}: {condition}{}\n{}",
                    if last.is_empty() {
                        String::new()
                    } else {
                        format!(" (last error: {last})")
                    },
                    self.state().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait (up to 10 s) for a visible element matching `selector`.
    pub async fn wait_visible(&self, selector: &str) {
        self.wait_for(&visible_js(selector), Duration::from_secs(10))
            .await;
    }

    /// Whether an element matches `selector`.
    pub async fn exists(&self, selector: &str) -> bool {
        self.eval(&format!(
            "!!document.querySelector({})",
            js_string(selector)
        ))
        .await
        .as_bool()
        .unwrap_or(false)
    }

    /// How many elements match `selector`.
    pub async fn count(&self, selector: &str) -> usize {
        self.eval(&format!(
            "document.querySelectorAll({}).length",
            js_string(selector)
        ))
        .await
        .as_u64()
        .unwrap_or(0) as usize
    }

    /// Click the first element matching `selector` with the mouse, once it is
    /// visible, enabled and not covered by another element (waits up to 10 s).
    pub async fn click(&self, selector: &str) {
        let sel = js_string(selector);
        let timeout = Duration::from_secs(10);
        self.wait_for(
            &format!(
                "{} && !document.querySelector({sel}).disabled",
                visible_js(selector)
            ),
            timeout,
        )
        .await;
        let deadline = Instant::now() + timeout;
        let (x, y) = loop {
            let hit = self
                .eval(&format!(
                    "(() => {{ const e = document.querySelector({sel}); if (!e) return [0, 0, 'nothing']; \
                     e.scrollIntoView({{block: 'center', inline: 'center'}}); \
                     const r = e.getBoundingClientRect(); const x = r.left + r.width / 2, y = r.top + r.height / 2; \
                     const top = document.elementFromPoint(x, y); \
                     return [x, y, !top || e.contains(top) ? '' : top.outerHTML.slice(0, 200)]; }})()"
                ))
                .await;
            let covered = hit[2].as_str().unwrap_or_default().to_string();
            if covered.is_empty() {
                break (
                    hit[0].as_f64().unwrap_or(0.0),
                    hit[1].as_f64().unwrap_or(0.0),
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "cannot click {selector}: covered by {covered}\n{}",
                    self.state().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            )
            .await;
        }
    }

    /// Set the value of the form control matching `selector` as a person would:
    /// text is typed (after clearing the field), a `<select>` option chosen, a
    /// checkbox set for `"true"`/`"false"`; `input` and `change` events fire.
    pub async fn fill(&self, selector: &str, value: &str) {
        self.wait_visible(selector).await;
        let sel = js_string(selector);
        let val = js_string(value);
        let typed = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({sel}); e.focus(); \
                 const fire = () => {{ e.dispatchEvent(new Event('input', {{bubbles: true}})); \
                   e.dispatchEvent(new Event('change', {{bubbles: true}})); }}; \
                 if (e.type === 'checkbox' || e.type === 'radio') {{ e.checked = {val} === 'true'; fire(); return false; }} \
                 if (e.tagName === 'SELECT' || /^(date|time|datetime-local|month|week|color|range)$/.test(e.type)) {{ \
                   e.value = {val}; fire(); return false; }} \
                 if (typeof e.select === 'function') e.select(); e.value = ''; \
                 e.dispatchEvent(new Event('input', {{bubbles: true}})); return true; }})()"
            ))
            .await;
        if typed == Value::Bool(true) {
            if !value.is_empty() {
                self.call("Input.insertText", json!({"text": value})).await;
            }
            self.eval(&format!(
                "document.querySelector({sel}).dispatchEvent(new Event('change', {{bubbles: true}}))"
            ))
            .await;
        }
    }

    /// The visible text of the first element matching `selector` (waits up to
    /// 10 s for one to exist).
    pub async fn text(&self, selector: &str) -> String {
        let sel = js_string(selector);
        self.wait_for(
            &format!("document.querySelector({sel})"),
            Duration::from_secs(10),
        )
        .await;
        self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); return e.innerText ?? e.textContent; }})()"
        ))
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// The page's URL.
    pub async fn url(&self) -> String {
        self.eval("location.href")
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Save the whole page (not only the viewport) as a PNG file, creating its
    /// directory.
    pub async fn screenshot(&self, path: &Path) {
        let metrics = self.call("Page.getLayoutMetrics", json!({})).await;
        let size = &metrics["cssContentSize"];
        let viewport = &metrics["cssLayoutViewport"];
        let width = viewport["clientWidth"].as_f64().unwrap_or(1280.0);
        let height = size["height"]
            .as_f64()
            .unwrap_or(860.0)
            .max(viewport["clientHeight"].as_f64().unwrap_or(0.0))
            .min(8000.0);
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
                }),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .expect("a base64 screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Uncaught exceptions, `console.error` calls and browser errors (CSP
    /// violations, failed loads...) seen so far, in order.
    pub fn js_errors(&self) -> Vec<String> {
        lock(&self.cdp.events)
            .iter()
            .filter_map(|e| {
                let p = &e["params"];
                match e["method"].as_str()? {
                    "Runtime.exceptionThrown" => {
                        let d = &p["exceptionDetails"];
                        Some(format!(
                            "exception: {}",
                            d["exception"]["description"]
                                .as_str()
                                .or(d["text"].as_str())
                                .unwrap_or("?")
                        ))
                    }
                    "Runtime.consoleAPICalled" if p["type"] == "error" => Some(format!(
                        "console.error: {}",
                        p["args"]
                            .as_array()
                            .map(|a| a
                                .iter()
                                .map(|v| v["value"]
                                    .as_str()
                                    .or(v["description"].as_str())
                                    .unwrap_or("?")
                                    .to_string())
                                .collect::<Vec<_>>()
                                .join(" "))
                            .unwrap_or_default()
                    )),
                    "Log.entryAdded" if p["entry"]["level"] == "error" => Some(format!(
                        "{}: {} {}",
                        p["entry"]["source"].as_str().unwrap_or("log"),
                        p["entry"]["text"].as_str().unwrap_or("?"),
                        p["entry"]["url"].as_str().unwrap_or("")
                    )),
                    _ => None,
                }
            })
            .collect()
    }
}

fn visible_js(selector: &str) -> String {
    format!(
        "(() => {{ const e = document.querySelector({}); return !!e && e.getClientRects().length > 0; }})()",
        js_string(selector)
    )
}

/// The last `n` lines of `text` that `keep` keeps.
fn tail_lines(text: &str, n: usize, keep: impl Fn(&str) -> bool) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| keep(l)).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
