//! The console's page, script and style: three files embedded in the binary (no
//! Node toolchain, no external assets), served with strict security headers.
//!
//! The page is a hash-routed single page (`/#/jobs/NAME`...) that talks to the
//! REST API with the session cookie and the CSRF token of the session, and
//! listens to `/api/events` for live updates.

use std::sync::OnceLock;

use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::state::AppState;

/// The page.
pub const INDEX_HTML: &str = include_str!("../assets/index.html");
/// The script (one ES module).
pub const APP_JS: &str = include_str!("../assets/app.js");
/// The style.
pub const APP_CSS: &str = include_str!("../assets/app.css");

/// The Content-Security-Policy of the console: only its own script, style and
/// connections; no inline script, no framing, no plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `/`, `/app.js`, `/app.css`.
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/app.js", get(script))
        .route("/app.css", get(style))
}

/// `GET /`.
pub async fn index(headers: HeaderMap) -> Response {
    asset(&headers, Asset::Html)
}

/// `GET /app.js`.
pub async fn script(headers: HeaderMap) -> Response {
    asset(&headers, Asset::Js)
}

/// `GET /app.css`.
pub async fn style(headers: HeaderMap) -> Response {
    asset(&headers, Asset::Css)
}

#[derive(Debug, Clone, Copy)]
enum Asset {
    Html,
    Js,
    Css,
}

impl Asset {
    fn body(self) -> &'static str {
        match self {
            Asset::Html => INDEX_HTML,
            Asset::Js => APP_JS,
            Asset::Css => APP_CSS,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Asset::Html => "text/html; charset=utf-8",
            Asset::Js => "text/javascript; charset=utf-8",
            Asset::Css => "text/css; charset=utf-8",
        }
    }

    /// A strong validator: a hash of the content (the files only change with
    /// the binary).
    fn etag(self) -> &'static str {
        static TAGS: OnceLock<[String; 3]> = OnceLock::new();
        let tags = TAGS.get_or_init(|| {
            [Asset::Html, Asset::Js, Asset::Css].map(|a| format!("\"{:016x}\"", fnv1a(a.body())))
        });
        &tags[self as usize]
    }
}

/// 64-bit FNV-1a: enough to tell versions of a file apart.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The headers every console file carries.
pub fn security_headers(h: &mut HeaderMap) {
    let set = |h: &mut HeaderMap, name: HeaderName, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(h, header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(
        h,
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        h,
        HeaderName::from_static("permissions-policy"),
        "camera=(), microphone=(), geolocation=(), payment=()",
    );
}

fn asset(request: &HeaderMap, asset: Asset) -> Response {
    let etag = asset.etag();
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == etag || t == "*" || t.strip_prefix("W/") == Some(etag)
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type())], asset.body()).into_response()
    };
    let h = response.headers_mut();
    security_headers(h);
    // Revalidate every time (cheap with the ETag): a new binary serves new files
    // under the same names.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::ETAG,
        HeaderValue::from_str(etag).expect("an ETag is ASCII"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(asset: Asset, if_none_match: Option<&str>) -> Response {
        let mut h = HeaderMap::new();
        if let Some(t) = if_none_match {
            h.insert(
                header::IF_NONE_MATCH,
                HeaderValue::from_str(t).expect("ascii"),
            );
        }
        match asset {
            Asset::Html => index(h).await,
            Asset::Js => script(h).await,
            Asset::Css => style(h).await,
        }
    }

    #[tokio::test]
    async fn every_file_has_its_type_and_the_security_headers() {
        for (asset, ty) in [
            (Asset::Html, "text/html"),
            (Asset::Js, "text/javascript"),
            (Asset::Css, "text/css"),
        ] {
            let r = get(asset, None).await;
            assert_eq!(r.status(), StatusCode::OK);
            let h = r.headers();
            let value = |n: HeaderName| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
            assert!(value(header::CONTENT_TYPE).starts_with(ty), "{asset:?}");
            let csp = value(header::CONTENT_SECURITY_POLICY);
            assert!(csp.starts_with("default-src 'self'"), "{csp}");
            assert!(
                !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
                "{csp}"
            );
            assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
            assert_eq!(value(header::X_CONTENT_TYPE_OPTIONS), "nosniff");
            assert_eq!(value(header::X_FRAME_OPTIONS), "DENY");
            assert_eq!(value(header::REFERRER_POLICY), "no-referrer");
            assert_eq!(value(header::CACHE_CONTROL), "no-cache");
            assert!(value(header::ETAG).starts_with('"'));
        }
    }

    #[tokio::test]
    async fn a_matching_etag_gets_304_with_the_headers() {
        let etag = Asset::Js.etag();
        let r = get(Asset::Js, Some(&format!("\"x\", {etag}"))).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert!(r.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        assert_eq!(
            get(Asset::Js, Some("\"other\"")).await.status(),
            StatusCode::OK
        );
        assert_ne!(Asset::Js.etag(), Asset::Css.etag());
    }

    #[test]
    fn the_page_loads_only_its_own_files_and_has_no_inline_code() {
        assert!(INDEX_HTML.contains(r#"<script type="module" src="/app.js"></script>"#));
        assert!(INDEX_HTML.contains(r#"<link rel="stylesheet" href="/app.css">"#));
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("app.css", APP_CSS),
        ] {
            for needle in ["http://", "https://", "//cdn", "@import", "url("] {
                // The only absolute URLs allowed are the SVG namespace and
                // placeholders shown to people.
                let hits = text
                    .match_indices(needle)
                    .filter(|(i, _)| {
                        let rest = &text[*i..];
                        !rest.starts_with("http://www.w3.org/2000/svg")
                            && !rest.starts_with("https://example.com")
                    })
                    .count();
                assert_eq!(hits, 0, "{name} refers to an external resource ({needle})");
            }
            assert!(!text.contains(" style="), "{name} has an inline style");
        }
        assert_eq!(
            INDEX_HTML.matches("<script").count(),
            1,
            "one script, no inline code"
        );
        let handlers = INDEX_HTML.match_indices(" on").filter(|(i, _)| {
            let rest = &INDEX_HTML[i + 3..];
            let name_len = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            name_len > 0 && rest[name_len..].starts_with('=')
        });
        assert_eq!(handlers.count(), 0, "no inline event handlers");
    }

    #[test]
    fn the_script_never_parses_html() {
        for needle in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ] {
            assert!(!APP_JS.contains(needle), "app.js uses {needle}");
        }
        assert!(APP_JS.lines().count() < 1500, "app.js stays small");
    }
}
