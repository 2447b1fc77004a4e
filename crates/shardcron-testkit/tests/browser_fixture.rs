//! The headless Chromium fixture: a page served on loopback, typed into,
//! clicked, read and photographed through the DevTools Protocol.

use std::time::Duration;

use axum::response::Html;
use axum::routing::get;
use shardcron_testkit::browser::Browser;

const PAGE: &str = r#"<!doctype html>
<title>fixture</title>
<input id="name">
<select id="colour"><option value="red">red</option><option value="blue">blue</option></select>
<input id="ok" type="checkbox">
<button id="go" disabled>Go</button>
<p id="out"></p>
<script>
  const go = document.getElementById('go');
  document.getElementById('name').addEventListener('input', (e) => { go.disabled = !e.target.value; });
  go.addEventListener('click', () => {
    setTimeout(() => {
      document.getElementById('out').textContent =
        `${document.getElementById('name').value} likes ${document.getElementById('colour').value}` +
        (document.getElementById('ok').checked ? ' (sure)' : '');
    }, 200);
  });
  setTimeout(() => { throw new Error('boom from the page'); }, 0);
</script>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_is_filled_clicked_read_and_photographed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route("/", get(|| async { Html(PAGE) }));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let browser = Browser::launch().await;
    let page = browser.new_page().await;
    page.goto(&format!("http://{addr}/")).await;
    assert_eq!(page.eval("document.title").await, "fixture");
    assert_eq!(page.count("option").await, 2);
    assert!(!page.exists("#missing").await);

    page.fill("#name", "Ada \"quoted\" 'x'").await;
    page.fill("#colour", "blue").await;
    page.fill("#ok", "true").await;
    page.click("#go").await;
    page.wait_for(
        "document.getElementById('out').textContent !== ''",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        page.text("#out").await,
        "Ada \"quoted\" 'x' likes blue (sure)"
    );

    // Typing replaces what was there.
    page.fill("#name", "Bob").await;
    assert_eq!(
        page.eval("document.getElementById('name').value").await,
        "Bob"
    );

    let errors = page.js_errors();
    assert!(
        errors.iter().any(|e| e.contains("boom from the page")),
        "{errors:?}"
    );
    assert!(page.try_eval("nope.nope").await.is_err());

    let dir = tempfile::tempdir().expect("tempdir");
    let png = dir.path().join("shots/page.png");
    page.screenshot(&png).await;
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG file");
    assert!(bytes.len() > 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "not true within")]
async fn a_condition_that_never_holds_fails_with_the_page_state() {
    let browser = Browser::launch().await;
    let page = browser.new_page().await;
    page.goto("about:blank").await;
    page.wait_for("window.never === 1", Duration::from_millis(300))
        .await;
}
