//! The web console in a real headless Chromium, against a real node in this
//! process: the embedded registry, a SQLite history, an instance running
//! scripts, and the console served on loopback. A person's path through it:
//! log in, create a job in the editor, watch its executions arrive without
//! reloading, trigger it, disable an item, read the history and one execution's
//! output, look at the overview.
//!
//! Screenshots of every step go to `$SHARDCRON_SCREENSHOTS`, else to
//! `<target dir>/screenshots/console`; with `SHARDCRON_UPDATE_SCREENSHOT=1` the
//! overview is also copied to `docs/console.png` (shown by the README).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use shardcron_console::auth::{Auth, AuthOptions};
use shardcron_console::{ConsoleState, serve};
use shardcron_core::clock::SystemClock;
use shardcron_registry::{MemoryRegistry, Registry};
use shardcron_runtime::{
    Cluster, Handlers, Instance, InstanceConfig, Runner, SchedulerOptions, ScriptJob, ScriptOptions,
};
use shardcron_store::{ExecutionQuery, HistoryStore, HistoryWriter, WriterOptions};
use shardcron_testkit::browser::{Browser, Page, js_string};
use shardcron_testkit::write_script;
use tempfile::TempDir;
use tokio::sync::oneshot;

const PASSWORD: &str = "a-console-test-password";
/// An admin API token, for setting things up around the browser.
const ADMIN_TOKEN: &str = "admin-token-for-the-console-test";
const JOB: &str = "orders-sync";
const WAIT: Duration = Duration::from_secs(20);

/// A node as `shardcron standalone` assembles it, in this process.
struct Node {
    base: String,
    store: HistoryStore,
    writer: HistoryWriter,
    instance: Option<Arc<Instance>>,
    scripts: PathBuf,
    stop_console: Option<oneshot::Sender<()>>,
    _dir: TempDir,
}

impl Node {
    async fn start() -> Node {
        let dir = TempDir::new().expect("tempdir");
        let scripts = dir.path().join("scripts");
        std::fs::create_dir(&scripts).expect("mkdir scripts");
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let clock = SystemClock::shared();
        let url = format!("sqlite://{}", dir.path().join("history.db").display());
        let store = HistoryStore::connect(&url).await.expect("history database");
        let writer =
            HistoryWriter::start(store.clone(), WriterOptions::new(dir.path().join("spool")))
                .await
                .expect("history writer");
        let handlers = Handlers::new().scripts(ScriptJob::new(ScriptOptions {
            allow: vec![scripts.clone()],
            ..Default::default()
        }));
        let config = InstanceConfig {
            name: "node-1".into(),
            capabilities: Vec::new(),
            labels: BTreeMap::new(),
            lease_ttl: Duration::from_secs(3),
            fence_margin: Duration::from_millis(500),
            heartbeat_interval: Duration::from_millis(500),
            ..InstanceConfig::new()
        };
        let runner = Runner {
            handlers,
            history: Arc::new(writer.clone()),
            options: SchedulerOptions::default(),
        };
        let instance = Arc::new(
            Instance::start_with(registry.clone(), clock.clone(), config, runner)
                .await
                .expect("instance starts"),
        );
        let (auth, _) = Auth::init(
            registry.clone(),
            clock.clone(),
            AuthOptions {
                admin_password: Some(PASSWORD.into()),
                admin_token: Some(ADMIN_TOKEN.into()),
                ..Default::default()
            },
        )
        .await
        .expect("auth");
        let state = Arc::new(ConsoleState {
            cluster: Cluster::new(registry, clock.clone()),
            history: store.clone(),
            instance: Some(Arc::downgrade(&instance)),
            auth,
            metrics: None,
            clock,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop_console, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            serve(listener, state, async {
                let _ = stopped.await;
            })
            .await
            .expect("console serves");
        });
        Node {
            base,
            store,
            writer,
            instance: Some(instance),
            scripts,
            stop_console: Some(stop_console),
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop_console.take() {
            let _ = s.send(());
        }
        if let Some(i) = self.instance.take().and_then(|i| Arc::try_unwrap(i).ok()) {
            let _ = i.shutdown().await;
        }
        let _ = self.writer.shutdown().await;
    }
}

/// Log in through the login form and wait for the page behind it.
async fn login(page: &Page, user: &str, password: &str) {
    page.wait_visible("[data-test=login-form]").await;
    page.fill("[data-test=login-user]", user).await;
    page.fill("[data-test=login-password]", password).await;
    page.click("[data-test=login-submit]").await;
    page.wait_for(
        "!document.querySelector('[data-test=login-form]') && !document.getElementById('top').hidden",
        WAIT,
    )
    .await;
}

/// Click `selector`, which opens the confirmation dialog, and answer it.
async fn click_and_confirm(page: &Page, selector: &str, ok: bool) {
    page.click(selector).await;
    page.wait_for("document.getElementById('confirm').open", WAIT)
        .await;
    page.click(if ok {
        "[data-test=confirm-ok]"
    } else {
        "[data-test=confirm-cancel]"
    })
    .await;
    page.wait_for("!document.getElementById('confirm').open", WAIT)
        .await;
}

/// Whether the first element matching `selector` is shown, as JavaScript.
fn shown_js(selector: &str) -> String {
    format!(
        "((e) => !!e && e.getClientRects().length > 0)(document.querySelector({}))",
        js_string(selector)
    )
}

/// Where screenshots go.
fn screenshot_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SHARDCRON_SCREENSHOTS") {
        return PathBuf::from(d);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            // <target>/debug/deps/browser-HASH
            let exe = std::env::current_exe().ok()?;
            exe.ancestors().nth(3).map(Path::to_path_buf)
        })
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("screenshots").join("console")
}

struct Shots {
    dir: PathBuf,
    n: u32,
}

impl Shots {
    async fn take(&mut self, page: &Page, name: &str) -> PathBuf {
        self.n += 1;
        // Let transitions and the last refresh settle.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let path = self.dir.join(format!("{:02}-{name}.png", self.n));
        page.screenshot(&path).await;
        path
    }
}

/// `document.querySelectorAll(selector).length`, as JavaScript.
fn count_js(selector: &str) -> String {
    format!("document.querySelectorAll({}).length", js_string(selector))
}

/// The trimmed text of `selector`, as JavaScript ('' when absent).
fn text_js(selector: &str) -> String {
    format!(
        "(document.querySelector({})?.textContent ?? '').trim()",
        js_string(selector)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_runs_a_job_from_the_console_in_a_real_browser() {
    let node = Node::start().await;
    let script = write_script(
        &node.scripts,
        "sync-orders.sh",
        // A manual run of item 1 fails (so that the overview has a failure to
        // show).
        "echo \"hello from item $SHARDCRON_ITEM ($SHARDCRON_ITEM_PARAM)\"\nsleep 0.3\n\
         if [ \"$SHARDCRON_SOURCE$SHARDCRON_ITEM\" = MANUAL1 ]; then echo 'no route to south' >&2; exit 3; fi",
    );
    let mut shots = Shots {
        dir: screenshot_dir(),
        n: 0,
    };
    let browser = Browser::launch().await;
    let page = browser.new_page().await;

    // Log in: a wrong password is refused in place, the right one opens the
    // overview.
    page.goto(&format!("{}/", node.base)).await;
    page.wait_visible("[data-test=login-form]").await;
    page.fill("[data-test=login-user]", "admin").await;
    page.fill("[data-test=login-password]", "not-the-password")
        .await;
    page.click("[data-test=login-submit]").await;
    page.wait_for(
        &format!("{}.includes('Wrong')", text_js("[data-test=login-error]")),
        WAIT,
    )
    .await;
    page.fill("[data-test=login-password]", PASSWORD).await;
    shots.take(&page, "login").await;
    page.click("[data-test=login-submit]").await;
    page.wait_visible("[data-test=overview]").await;
    page.wait_for(
        &format!("{} === '1'", text_js("[data-test=card-instances] .num")),
        WAIT,
    )
    .await;
    assert!(page.text("[data-test=whoami]").await.contains("admin"));

    // Create the job in the editor; a bad field is reported next to it.
    page.click("[data-test=nav-jobs]").await;
    page.wait_visible("[data-test=jobs-page]").await;
    page.click("[data-test=new-job]").await;
    page.wait_visible("[data-test=job-editor]").await;
    page.fill("[data-test=f-name]", JOB).await;
    page.fill(
        "[data-test=f-description]",
        "Syncs orders, one shard per <b>region</b>",
    )
    .await;
    page.fill("[data-test=f-stype]", "every").await;
    page.fill("[data-test=f-every]", "2s").await;
    page.fill("[data-test=f-shards]", "0").await;
    page.fill("[data-test=f-shard_params]", "0=north,1=south")
        .await;
    page.fill("[data-test=f-kind]", "script").await;
    page.fill(
        "[data-test=f-command]",
        &format!("{} --fast", script.display()),
    )
    .await;
    page.wait_for(
        &format!(
            "{}.includes('shards') || {0}.includes('10000')",
            text_js("[data-test=error-shards]")
        ),
        WAIT,
    )
    .await;
    shots.take(&page, "editor-invalid").await;
    page.fill("[data-test=f-shards]", "2").await;
    page.wait_for(
        &format!(
            "{} === '' && {} >= 3",
            text_js("[data-test=error-shards]"),
            count_js("[data-test=next-preview] [data-test=next-time]")
        ),
        WAIT,
    )
    .await;
    assert_eq!(
        page.eval(&text_js("[data-test=editor-error]")).await,
        "",
        "no other problem"
    );
    shots.take(&page, "editor").await;
    page.click("[data-test=editor-save]").await;
    page.wait_for(
        &format!(
            "location.hash === {} && document.querySelector('[data-test=job-page]')",
            js_string(&format!("#/jobs/{JOB}"))
        ),
        WAIT,
    )
    .await;
    page.wait_for(&format!("{} === 2", count_js("[data-test=item-row]")), WAIT)
        .await;
    // Text from the API is shown as text, never as markup.
    assert_eq!(
        page.eval(&text_js("[data-test=job-page] .desc")).await,
        "Syncs orders, one shard per <b>region</b>"
    );
    assert!(!page.exists("[data-test=job-page] .desc b").await);

    // New executions show up on the job page by themselves (no navigation, no
    // reload: the marker set on the window stays), through the event stream.
    page.wait_for(
        &format!("{} === 'live'", text_js("[data-test=live-status]")),
        WAIT,
    )
    .await;
    let before = page
        .eval(&format!(
            "window.__marker = 'same page'; {}",
            count_js("[data-test=exec-row]")
        ))
        .await
        .as_u64()
        .unwrap_or(0);
    page.wait_for(
        &format!(
            "{} > {before} && window.__marker === 'same page' && location.hash === {}",
            count_js("[data-test=exec-row][data-status=SUCCEEDED]"),
            js_string(&format!("#/jobs/{JOB}"))
        ),
        WAIT,
    )
    .await;
    shots.take(&page, "job-live").await;

    // Trigger: a manual execution of each item. (A trigger that arrives while
    // the item runs is skipped, so trigger between two scheduled runs.)
    page.wait_for(
        &format!(
            "{} === 0 && Date.parse(document.querySelector('[data-test=next-fires] time')?.dateTime) - Date.now() > 800",
            count_js("[data-test=item-row]:not([data-state=idle])")
        ),
        WAIT,
    )
    .await;
    page.click("[data-test=job-trigger]").await;
    page.wait_for(
        &format!(
            "{} >= 1 && {} >= 1",
            count_js("[data-test=exec-row][data-source=MANUAL][data-item='0']"),
            count_js("[data-test=exec-row][data-source=MANUAL][data-item='1']")
        ),
        WAIT,
    )
    .await;

    // Disable item 1: the page says so, and it runs no more while item 0 does.
    page.click("[data-test=item-toggle][data-item='1']").await;
    page.wait_for(
        "document.querySelector(\"[data-test=item-row][data-item='1']\")?.dataset.state === 'disabled'",
        WAIT,
    )
    .await;
    assert_eq!(
        page.eval(&text_js(
            "[data-test=item-row][data-item='1'] [data-test=item-state]"
        ))
        .await,
        "disabled"
    );
    let disabled_at = Utc::now();
    // A fire already under way when the flag was written may still start.
    let settled = (disabled_at + chrono::Duration::seconds(2)).to_rfc3339();
    let newer = |item: u32| {
        format!(
            "[...document.querySelectorAll(\"[data-test=exec-row][data-item='{item}']\")]\
             .filter((r) => Date.parse(r.dataset.fire) > Date.parse({})).length",
            js_string(&settled)
        )
    };
    page.wait_for(&format!("{} >= 2", newer(0)), WAIT).await;
    assert_eq!(
        page.eval(&newer(1)).await,
        0,
        "item 1 ran after it was disabled"
    );
    let late_item_1 = node
        .store
        .query(&ExecutionQuery {
            job: Some(JOB.into()),
            item: Some(1),
            fire_from: Some(disabled_at + chrono::Duration::seconds(2)),
            ..Default::default()
        })
        .await
        .expect("query");
    assert!(
        late_item_1.items.is_empty(),
        "item 1 ran after it was disabled: {:?}",
        late_item_1.items
    );
    shots.take(&page, "item-disabled").await;

    // The job's history, filtered to item 0, and one execution with its output.
    page.click("[data-test=job-history]").await;
    page.wait_visible("[data-test=history-filters]").await;
    page.wait_for(&format!("{} > 0", count_js("[data-test=exec-row]")), WAIT)
        .await;
    assert_eq!(
        page.eval("document.querySelector('[data-test=filter-job]').value")
            .await,
        JOB
    );
    page.fill("[data-test=filter-item]", "0").await;
    page.fill("[data-test=filter-status]", "SUCCEEDED").await;
    page.click("[data-test=filter-apply]").await;
    page.wait_for(
        &format!(
            "location.hash.includes('item=0') && {} > 0 && {} === {0}",
            count_js("[data-test=exec-row]"),
            count_js("[data-test=exec-row][data-item='0'][data-status=SUCCEEDED]")
        ),
        WAIT,
    )
    .await;
    shots.take(&page, "history").await;
    let id = page
        .eval("document.querySelector('[data-test=exec-row]').dataset.id")
        .await;
    page.click("[data-test=exec-row] [data-test=exec-link]")
        .await;
    page.wait_visible("[data-test=execution-page]").await;
    page.wait_for(
        &format!(
            "{}.includes('hello from item 0 (north)')",
            text_js("[data-test=exec-output]")
        ),
        WAIT,
    )
    .await;
    assert_eq!(page.eval(&text_js("[data-test=exec-id]")).await, id);
    assert!(page.count("[data-test=transition]").await >= 2);
    shots.take(&page, "execution").await;

    // The overview: the node, the leader, the job, the lateness chart.
    page.click("[data-test=nav-overview]").await;
    page.wait_visible("[data-test=overview]").await;
    page.wait_for(
        &format!(
            "{} === '1' && {} === 'node-1' && document.querySelector('[data-test=lateness-chart]')?.tagName === 'svg'",
            text_js("[data-test=card-jobs] .num"),
            text_js("[data-test=card-leader] .num")
        ),
        WAIT,
    )
    .await;
    let overview = shots.take(&page, "overview").await;
    if std::env::var("SHARDCRON_UPDATE_SCREENSHOT").as_deref() == Ok("1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/console.png");
        std::fs::copy(&overview, &docs)
            .unwrap_or_else(|e| panic!("copy the overview to {}: {e}", docs.display()));
    }

    // No script errors and no policy violations on the way (failed requests,
    // such as the wrong password's 401, are expected).
    let errors: Vec<String> = page
        .js_errors()
        .into_iter()
        .filter(|e| !e.starts_with("network:"))
        .collect();
    assert!(errors.is_empty(), "errors in the page: {errors:#?}");

    // Where the event stream fails, the page polls instead: a second tab (same
    // session cookie) whose EventSource always errors still sees new runs.
    let polling = browser.new_page().await;
    polling
        .add_init_script(
            "window.EventSource = class { constructor() { \
               setTimeout(() => this.onerror && this.onerror(new Event('error')), 50); } \
               addEventListener() {} close() {} };",
        )
        .await;
    polling.goto(&format!("{}/#/jobs/{JOB}", node.base)).await;
    polling
        .wait_for(
            &format!(
                "{} === 'polling' && {} > 0",
                text_js("[data-test=live-status]"),
                count_js("[data-test=exec-row]")
            ),
            WAIT,
        )
        .await;
    let newest = polling
        .eval("window.__marker = 'same page'; document.querySelector('[data-test=exec-row]').dataset.id")
        .await;
    polling
        .wait_for(
            &format!(
                "document.querySelector('[data-test=exec-row]').dataset.id !== {newest} \
                 && window.__marker === 'same page'"
            ),
            WAIT,
        )
        .await;
    drop(polling);

    drop(page);
    drop(browser);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_pages_confirmations_roles_and_an_expired_session_in_a_real_browser() {
    let node = Node::start().await;
    let sleeper = write_script(&node.scripts, "cleanup.sh", "echo started\nexec sleep 60");
    let http = reqwest::Client::new();
    let api = |path: &str| format!("{}{path}", node.base);
    let created = http
        .post(api("/api/jobs"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({
            "name": "cleanup",
            "description": "Runs until cancelled",
            "manual": true,
            "command": [sleeper.display().to_string()],
        }))
        .send()
        .await
        .expect("create a job");
    assert_eq!(created.status(), 201, "{:?}", created.text().await);
    let mut shots = Shots {
        dir: screenshot_dir().join("admin"),
        n: 0,
    };
    let browser = Browser::launch().await;
    let page = browser.new_page().await;
    page.goto(&format!("{}/#/jobs", node.base)).await;
    login(&page, "admin", PASSWORD).await;
    // Back where the login interrupted.
    page.wait_visible("[data-test=jobs-page]").await;

    // An API token is shown once, works, and stops working once revoked.
    page.click("[data-test=nav-tokens]").await;
    page.wait_visible("[data-test=token-form]").await;
    page.fill("[data-test=token-name]", "ci-deploy").await;
    page.fill("[data-test=token-role]", "viewer").await;
    page.click("[data-test=token-create]").await;
    page.wait_for(
        &format!(
            "{}.length >= 20 && {}",
            text_js("[data-test=new-token]"),
            shown_js("[data-test=token-row]")
        ),
        WAIT,
    )
    .await;
    let token = page.text("[data-test=new-token]").await;
    shots.take(&page, "tokens").await;
    let with_token = || http.get(api("/api/jobs")).bearer_auth(token.trim()).send();
    assert_eq!(with_token().await.expect("GET").status(), 200);
    let before = page.count("[data-test=token-row]").await;
    click_and_confirm(
        &page,
        "[data-test=token-row] [data-test=token-revoke]",
        true,
    )
    .await;
    page.wait_for(
        &format!("{} === {}", count_js("[data-test=token-row]"), before - 1),
        WAIT,
    )
    .await;
    // Nodes may cache a token lookup for a moment (auth's CACHE_TTL).
    let revoked_at = std::time::Instant::now();
    while with_token().await.expect("GET").status() != 401 {
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "the revoked token still works"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A viewer is added.
    page.click("[data-test=nav-users]").await;
    page.wait_visible("[data-test=user-form]").await;
    page.fill("[data-test=user-name]", "watcher").await;
    page.fill("[data-test=user-password]", "watcher-password-1")
        .await;
    page.fill("[data-test=user-role]", "viewer").await;
    page.click("[data-test=user-create]").await;
    page.wait_for(&shown_js("[data-test=user-row][data-name=watcher]"), WAIT)
        .await;
    shots.take(&page, "users").await;

    // The editor loads a job as it is stored and saves a change to it.
    page.click("[data-test=nav-jobs]").await;
    page.wait_visible("[data-test=job-row][data-job=cleanup]")
        .await;
    page.click("[data-test=job-row][data-job=cleanup] [data-test=job-edit]")
        .await;
    page.wait_for(
        &format!(
            "document.querySelector('[data-test=f-command]').value === {} \
             && document.querySelector('[data-test=f-stype]').value === 'manual' \
             && document.querySelector('[data-test=f-name]').disabled",
            js_string(&sleeper.display().to_string())
        ),
        WAIT,
    )
    .await;
    page.fill("[data-test=f-description]", "Runs until cancelled (edited)")
        .await;
    page.fill("[data-test=f-timeout]", "10m").await;
    page.click("[data-test=editor-save]").await;
    page.wait_for(
        &format!(
            "location.hash === '#/jobs/cleanup' && {}.includes('(edited)')",
            text_js("[data-test=job-page] .desc")
        ),
        WAIT,
    )
    .await;
    let stored: serde_json::Value = http
        .get(api("/api/jobs/cleanup"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(stored["job"]["timeout"], "10m", "{stored}");
    assert_eq!(stored["job"]["manual"], true, "{stored}");

    // A running execution is cancelled after confirming.
    page.click("[data-test=nav-jobs]").await;
    page.wait_visible("[data-test=job-row][data-job=cleanup]")
        .await;
    page.click("[data-test=job-row][data-job=cleanup] [data-test=job-trigger]")
        .await;
    page.click("[data-test=job-row][data-job=cleanup] [data-test=job-link]")
        .await;
    page.wait_for(
        "document.querySelector(\"[data-test=item-row][data-item='0']\")?.dataset.state === 'running'",
        WAIT,
    )
    .await;
    page.wait_visible("[data-test=exec-row][data-status=RUNNING]")
        .await;
    shots.take(&page, "running").await;
    click_and_confirm(&page, "[data-test=item-row] [data-test=exec-cancel]", true).await;
    page.wait_for(
        &format!(
            "{} === 1 && {} === 0",
            count_js("[data-test=exec-row][data-status=CANCELLED]"),
            count_js("[data-test=exec-row][data-status=RUNNING]")
        ),
        WAIT,
    )
    .await;

    // Deleting asks first: "Cancel" keeps the job, "Confirm" deletes it.
    click_and_confirm(&page, "[data-test=job-delete]", false).await;
    assert!(page.exists("[data-test=job-page][data-job=cleanup]").await);
    click_and_confirm(&page, "[data-test=job-delete]", true).await;
    page.wait_for(
        &format!(
            "location.hash === '#/jobs' && {} && {} === 0",
            shown_js("[data-test=jobs-page] [data-test=empty]"),
            count_js("[data-test=job-row]")
        ),
        WAIT,
    )
    .await;

    // The instance is disabled and enabled again.
    page.click("[data-test=nav-instances]").await;
    page.wait_visible("[data-test=instance-row][data-name=node-1]")
        .await;
    page.click("[data-test=instance-toggle][data-name=node-1]")
        .await;
    page.wait_for(
        &format!(
            "{} === 'disabled'",
            text_js("[data-test=instance-row][data-name=node-1] [data-test=enabled]")
        ),
        WAIT,
    )
    .await;
    shots.take(&page, "instances").await;
    page.click("[data-test=instance-toggle][data-name=node-1]")
        .await;
    page.wait_for(
        &format!(
            "{} === 'enabled'",
            text_js("[data-test=instance-row][data-name=node-1] [data-test=enabled]")
        ),
        WAIT,
    )
    .await;

    // Everything above is in the audit log.
    page.click("[data-test=nav-audit]").await;
    page.wait_for(
        "[...document.querySelectorAll('[data-test=audit-row]')].some((r) => r.textContent.includes('cleanup'))",
        WAIT,
    )
    .await;
    shots.take(&page, "audit").await;

    // A lost session (the cookie is gone) leads back to the login, and from
    // there to the page that was asked for.
    page.call("Network.clearBrowserCookies", serde_json::json!({}))
        .await;
    page.eval("location.hash = '#/history'").await;
    login(&page, "admin", PASSWORD).await;
    page.wait_for(
        "location.hash === '#/history' && document.querySelector('[data-test=history-page]')",
        WAIT,
    )
    .await;

    // A viewer sees everything but no button that changes something.
    page.click("[data-test=logout]").await;
    login(&page, "watcher", "watcher-password-1").await;
    page.eval("location.hash = '#/instances'").await;
    page.wait_visible("[data-test=instance-row][data-name=node-1]")
        .await;
    assert_eq!(page.count("[data-test=instance-toggle]").await, 0);
    page.click("[data-test=nav-jobs]").await;
    page.wait_visible("[data-test=jobs-page]").await;
    assert!(!page.exists("[data-test=new-job]").await);
    for admin_only in ["nav-audit", "nav-tokens", "nav-users"] {
        assert_eq!(
            page.eval(&shown_js(&format!("[data-test={admin_only}]")))
                .await,
            false,
            "{admin_only} is shown to a viewer"
        );
    }
    assert!(
        page.text("[data-test=whoami]").await.contains("viewer"),
        "the role is shown"
    );

    let errors: Vec<String> = page
        .js_errors()
        .into_iter()
        .filter(|e| !e.starts_with("network:"))
        .collect();
    assert!(errors.is_empty(), "errors in the page: {errors:#?}");
    drop(page);
    drop(browser);
    node.stop().await;
}
