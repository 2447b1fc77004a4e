//! Logins, sessions, CSRF, rate limiting, API tokens and users, over HTTP against
//! the real router, with the namespace in a `MemoryRegistry`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Node;
use reqwest::header::{AUTHORIZATION, COOKIE, RETRY_AFTER, SET_COOKIE};
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use shardcron_console::auth::{Auth, AuthOptions};
use shardcron_registry::{MemoryRegistry, RangeRequest, Registry};

const PASSWORD: &str = "correct horse battery staple";
const ENV_TOKEN: &str = "env-admin-token-0123456789abcdef";
/// The header of the session's CSRF token.
const CSRF: &str = "X-CSRF-Token";

async fn init(registry: &Arc<MemoryRegistry>, opts: AuthOptions) -> (Auth, Option<String>) {
    common::init_auth(registry.clone(), opts).await
}

/// Serve the console of `registry` with `auth`.
async fn serve(registry: &Arc<MemoryRegistry>, auth: Auth) -> Node {
    common::start(registry.clone(), auth, None).await
}

/// A namespace whose admin password is [`PASSWORD`], and one node serving it.
async fn start() -> (Arc<MemoryRegistry>, Node) {
    start_with(AuthOptions {
        admin_password: Some(PASSWORD.into()),
        ..Default::default()
    })
    .await
}

async fn start_with(opts: AuthOptions) -> (Arc<MemoryRegistry>, Node) {
    let registry = Arc::new(MemoryRegistry::new());
    let (auth, _) = init(&registry, opts).await;
    let node = serve(&registry, auth).await;
    (registry, node)
}

/// A client keeping cookies, like a browser.
fn browser() -> Client {
    Client::builder().cookie_store(true).build().unwrap()
}

/// A client without a cookie store.
fn plain() -> Client {
    Client::new()
}

async fn body(r: Response) -> Value {
    r.json().await.unwrap_or(Value::Null)
}

/// Send `req`.
async fn send(req: RequestBuilder) -> Response {
    req.send().await.unwrap()
}

/// Send `req`: the answer, whose status must be `want`.
async fn expect(req: RequestBuilder, want: StatusCode) -> Response {
    let (client, req) = req.build_split();
    let req = req.unwrap();
    let what = format!("{} {}", req.method(), req.url().path());
    let r = client.execute(req).await.unwrap();
    assert_eq!(r.status(), want, "{what}");
    r
}

/// `method path` on `node` with `Authorization: Bearer token`, without cookies.
fn bearer(node: &Node, method: Method, path: &str, token: &str) -> RequestBuilder {
    plain().request(method, node.at(path)).bearer_auth(token)
}

/// A change (`method path` on `node`) through the cookies of `client`, with
/// the session's CSRF token `csrf`.
fn change(client: &Client, node: &Node, method: Method, path: &str, csrf: &str) -> RequestBuilder {
    client.request(method, node.at(path)).header(CSRF, csrf)
}

/// `method path` on `node` with the session cookie `id` set by hand.
fn with_session(node: &Node, method: Method, path: &str, id: &str) -> RequestBuilder {
    plain()
        .request(method, node.at(path))
        .header(COOKIE, format!("shardcron_session={id}"))
}

async fn try_login(client: &Client, node: &Node, user: &str, password: &str) -> Response {
    let login = json!({"username": user, "password": password});
    send(client.post(node.at("/api/login")).json(&login)).await
}

/// Log in with `client`; returns the answer's JSON (with the CSRF token).
async fn login(client: &Client, node: &Node, user: &str, password: &str) -> Value {
    let r = try_login(client, node, user, password).await;
    assert_eq!(r.status(), StatusCode::OK, "login of {user}");
    body(r).await
}

/// Log in with `client`; returns the session's CSRF token.
async fn csrf_login(client: &Client, node: &Node, user: &str, password: &str) -> String {
    let s = login(client, node, user, password).await;
    s["csrf_token"].as_str().unwrap().to_owned()
}

/// The raw `Set-Cookie` header and the session id of a login answer.
fn session_cookie(r: &Response) -> (String, String) {
    let set = r
        .headers()
        .get(SET_COOKIE)
        .expect("Set-Cookie")
        .to_str()
        .unwrap()
        .to_owned();
    let id = set
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("shardcron_session=")
        .expect("the session cookie")
        .to_owned();
    (set, id)
}

/// Every key and value of the registry, as text.
async fn dump(registry: &MemoryRegistry) -> String {
    let all = registry.range(RangeRequest::prefix("")).await.unwrap();
    all.kvs
        .iter()
        .map(|kv| {
            format!(
                "{} = {}\n",
                String::from_utf8_lossy(&kv.key),
                String::from_utf8_lossy(&kv.value)
            )
        })
        .collect()
}

async fn value_of(registry: &MemoryRegistry, key: &str) -> Option<(Value, i64)> {
    let kv = registry.get(key.as_bytes()).await.unwrap()?;
    Some((serde_json::from_slice(&kv.value).unwrap(), kv.mod_revision))
}

/// Create an API token as `admin` (bearer `admin_token`); returns (id, token).
async fn create_token(node: &Node, admin_token: &str, name: &str, role: &str) -> (String, String) {
    let b = common::create_token(node, admin_token, name, role).await;
    assert_eq!(b["name"], name);
    assert_eq!(b["role"], role);
    (
        b["id"].as_str().unwrap().to_owned(),
        b["token"].as_str().unwrap().to_owned(),
    )
}

/// `GET path` on `node` with bearer `token` is answered with `want`.
async fn get_as(node: &Node, path: &str, token: &str, want: StatusCode) {
    expect(bearer(node, Method::GET, path, token), want).await;
}

#[tokio::test]
async fn the_generated_password_is_made_once_per_namespace() {
    let registry = Arc::new(MemoryRegistry::new());
    // Two nodes starting together: exactly one generates (and prints) it.
    let ((a, pa), (b, pb)) = tokio::join!(
        init(&registry, AuthOptions::default()),
        init(&registry, AuthOptions::default())
    );
    let generated = match (pa, pb) {
        (Some(p), None) | (None, Some(p)) => p,
        other => panic!("exactly one node must generate the password: {other:?}"),
    };
    assert!(generated.len() >= 12);
    // Later starts never generate again.
    let (c, pc) = init(&registry, AuthOptions::default()).await;
    assert_eq!(pc, None);
    // A fresh namespace gets another password.
    let other = Arc::new(MemoryRegistry::new());
    let (_, po) = init(&other, AuthOptions::default()).await;
    assert_ne!(po.as_deref(), Some(generated.as_str()));

    // Stored hashed (argon2id), never in clear.
    let (admin, _) = value_of(&registry, "console/users/admin").await.unwrap();
    assert!(
        admin["password_hash"]
            .as_str()
            .unwrap()
            .starts_with("$argon2id$")
    );
    assert!(!dump(&registry).await.contains(&generated));

    // Every node accepts it.
    for auth in [a, b, c] {
        let node = serve(&registry, auth).await;
        let s = login(&plain(), &node, "admin", &generated).await;
        assert_eq!(s["user"], "admin");
        assert_eq!(s["role"], "admin");
    }
}

#[tokio::test]
async fn there_is_no_default_password() {
    let registry = Arc::new(MemoryRegistry::new());
    // The first node generated a password (and printed it); this node did not.
    let (_first, generated) = init(&registry, AuthOptions::default()).await;
    assert!(generated.is_some());
    let (auth, none) = init(&registry, AuthOptions::default()).await;
    assert_eq!(none, None);
    let node = serve(&registry, auth).await;
    for (user, password) in [
        ("admin", ""),
        ("admin", "admin"),
        ("admin", "password"),
        ("admin", "shardcron"),
        ("root", "root"),
    ] {
        let r = try_login(&plain(), &node, user, password).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{user}/{password}");
    }
    // Nothing is readable without credentials.
    for path in ["/api/session", "/api/users", "/api/tokens"] {
        expect(plain().get(node.at(path)), StatusCode::UNAUTHORIZED).await;
    }
}

#[tokio::test]
async fn the_config_password_is_set_once_and_updated_when_it_changes() {
    let registry = Arc::new(MemoryRegistry::new());
    let opts = |p: &str| AuthOptions {
        admin_password: Some(p.into()),
        ..Default::default()
    };
    let (_, generated) = init(&registry, opts(PASSWORD)).await;
    assert_eq!(generated, None, "a configured password is never generated");
    let (_, rev) = value_of(&registry, "console/users/admin").await.unwrap();
    // The same password again: not rewritten.
    let (_, _) = init(&registry, opts(PASSWORD)).await;
    assert_eq!(
        value_of(&registry, "console/users/admin").await.unwrap().1,
        rev
    );
    // Without a password later: still no generated one.
    let (_, generated) = init(&registry, AuthOptions::default()).await;
    assert_eq!(generated, None);
    // A new config password replaces the old one.
    let (auth, _) = init(&registry, opts("another long password")).await;
    let node = serve(&registry, auth).await;
    let r = try_login(&plain(), &node, "admin", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    login(&plain(), &node, "admin", "another long password").await;
    assert!(!dump(&registry).await.contains("another long password"));

    // Weak passwords and tokens are refused, without echoing them.
    let r: Arc<dyn Registry> = registry.clone();
    let e = Auth::init(r.clone(), common::clock(), opts("short"))
        .await
        .unwrap_err();
    assert!(e.contains("at least 12") && !e.contains("short"), "{e}");
    let e = Auth::init(
        r,
        common::clock(),
        AuthOptions {
            admin_token: Some("tiny-token".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        e.contains("SHARDCRON_ADMIN_TOKEN") && !e.contains("tiny-token"),
        "{e}"
    );
}

#[tokio::test]
async fn login_session_and_logout() {
    let (_registry, node) = start().await;
    let client = browser();
    let r = try_login(&client, &node, "admin", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK);
    let (set_cookie, id) = session_cookie(&r);
    assert!(id.len() >= 40, "a long random session id");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(flag), "{flag} in {set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "{set_cookie}");
    let s = body(r).await;
    assert_eq!(s["user"], "admin");
    assert_eq!(s["role"], "admin");
    let csrf = s["csrf_token"].as_str().unwrap().to_owned();
    assert!(!csrf.is_empty() && csrf != id);

    // The cookie authenticates; /api/session gives the same CSRF token.
    let r = expect(client.get(node.at("/api/session")), StatusCode::OK).await;
    let s = body(r).await;
    assert_eq!(s["user"], "admin");
    assert_eq!(s["csrf_token"], csrf.as_str());
    // A proxy's own Basic authentication does not hide the cookie.
    let proxied = client
        .get(node.at("/api/session"))
        .header(AUTHORIZATION, "Basic cHJveHk6cHJveHk=");
    expect(proxied, StatusCode::OK).await;
    let r = expect(client.get(node.at("/api/users")), StatusCode::OK).await;
    assert_eq!(body(r).await["users"][0]["name"], "admin");

    // Logout is a change: it needs the CSRF token.
    let logout = || client.post(node.at("/api/logout"));
    expect(logout(), StatusCode::FORBIDDEN).await;
    let r = expect(logout().header(CSRF, &csrf), StatusCode::NO_CONTENT).await;
    let cleared = r.headers().get(SET_COOKIE).unwrap().to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let session = client.get(node.at("/api/session"));
    expect(session, StatusCode::UNAUTHORIZED).await;
    // The old cookie, sent again by hand, is dead too.
    let by_hand = with_session(&node, Method::GET, "/api/session", &id);
    expect(by_hand, StatusCode::UNAUTHORIZED).await;
    // Logging out again is harmless.
    expect(logout(), StatusCode::NO_CONTENT).await;
}

#[tokio::test]
async fn sessions_hold_on_every_node_and_logout_ends_them_everywhere() {
    let registry = Arc::new(MemoryRegistry::new());
    let opts = AuthOptions {
        admin_password: Some(PASSWORD.into()),
        ..Default::default()
    };
    let (a, _) = init(&registry, opts.clone()).await;
    let (b, _) = init(&registry, opts).await;
    let (a, b) = (serve(&registry, a).await, serve(&registry, b).await);
    let r = try_login(&plain(), &a, "admin", PASSWORD).await;
    let (_, id) = session_cookie(&r);
    let csrf = body(r).await["csrf_token"].as_str().unwrap().to_owned();
    let session_on = |node: &Node| with_session(node, Method::GET, "/api/session", &id);
    expect(session_on(&b), StatusCode::OK).await;

    // Stored by hash, bound to a lease.
    let dump_before = dump(&registry).await;
    assert!(
        !dump_before.contains(&id),
        "the raw session id is never stored"
    );
    let sessions = registry
        .range(RangeRequest::prefix("console/sessions/"))
        .await
        .unwrap();
    assert_eq!(sessions.kvs.len(), 1);
    assert_ne!(sessions.kvs[0].lease, 0);
    let ttl = registry
        .lease_time_to_live(sessions.kvs[0].lease)
        .await
        .unwrap()
        .unwrap();
    assert!(ttl > Duration::from_secs(11 * 3600) && ttl <= Duration::from_secs(12 * 3600));

    let logout = with_session(&a, Method::POST, "/api/logout", &id).header(CSRF, &csrf);
    expect(logout, StatusCode::NO_CONTENT).await;
    expect(session_on(&a), StatusCode::UNAUTHORIZED).await;
    // The other node may trust its cache for a second, no more.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    expect(session_on(&b), StatusCode::UNAUTHORIZED).await;
    assert!(
        registry
            .range(RangeRequest::prefix("console/sessions/"))
            .await
            .unwrap()
            .kvs
            .is_empty()
    );
}

#[tokio::test]
async fn wrong_passwords_are_401_then_rate_limited() {
    let (_registry, node) = start().await;
    for (user, password) in [
        ("admin", "wrong password 1"),
        ("nobody", "wrong password 2"),
    ] {
        let r = try_login(&plain(), &node, user, password).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(body(r).await["error"], "wrong user name or password");
    }
    // Missing fields are bad requests naming the field (and not failures).
    let no_password = json!({"username": "admin"});
    let r = plain().post(node.at("/api/login")).json(&no_password);
    let r = expect(r, StatusCode::BAD_REQUEST).await;
    assert_eq!(body(r).await["field"], "password");

    for i in 3..=5 {
        let r = try_login(&plain(), &node, "admin", &format!("wrong password {i}")).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "failure {i}");
    }
    // Five failures from this address in a minute: refused, even with the
    // right password, for any user.
    for (user, password) in [
        ("admin", "wrong again"),
        ("admin", PASSWORD),
        ("other", "x"),
    ] {
        let r = try_login(&plain(), &node, user, password).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{user}");
        let wait: u64 = r
            .headers()
            .get(RETRY_AFTER)
            .expect("Retry-After")
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
    }
}

#[tokio::test]
async fn successful_logins_do_not_count_against_the_limit() {
    let (_registry, node) = start().await;
    for _ in 0..7 {
        login(&plain(), &node, "admin", PASSWORD).await;
    }
    for _ in 0..4 {
        let r = try_login(&plain(), &node, "admin", "wrong password!").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    login(&plain(), &node, "admin", PASSWORD).await;
}

#[tokio::test]
async fn cookie_changes_need_the_csrf_token() {
    let (_registry, node) = start().await;
    let client = browser();
    let csrf = csrf_login(&client, &node, "admin", PASSWORD).await;
    let new_token = || {
        client
            .post(node.at("/api/tokens"))
            .json(&json!({"name": "ci", "role": "viewer"}))
    };
    let r = expect(new_token(), StatusCode::FORBIDDEN).await;
    assert!(body(r).await["error"].as_str().unwrap().contains(CSRF));
    let wrong = new_token().header(CSRF, "not-the-token");
    expect(wrong, StatusCode::FORBIDDEN).await;
    expect(new_token().header(CSRF, &csrf), StatusCode::CREATED).await;
    // Reads need none.
    let r = expect(client.get(node.at("/api/tokens")), StatusCode::OK).await;
    let tokens = body(r).await;
    assert_eq!(tokens["tokens"].as_array().unwrap().len(), 1);
    assert_eq!(tokens["tokens"][0]["created_by"], "admin");
    assert!(tokens["tokens"][0].get("token").is_none());
    assert!(tokens["tokens"][0].get("sha256").is_none());
}

#[tokio::test]
async fn api_tokens_are_hashed_and_work_without_csrf() {
    let (registry, node) = start_with(AuthOptions {
        admin_token: Some(ENV_TOKEN.into()),
        ..Default::default()
    })
    .await;
    let (admin_id, admin) = create_token(&node, ENV_TOKEN, "deploy", "admin").await;
    let (viewer_id, viewer) = create_token(&node, ENV_TOKEN, "grafana", "viewer").await;
    assert!(admin.starts_with("sc_") && admin.len() > 40, "{admin}");
    assert_ne!(admin_id, viewer_id);

    // A bearer change needs no CSRF token.
    let alice = json!({"name": "alice", "password": PASSWORD, "role": "viewer"});
    let r = bearer(&node, Method::POST, "/api/users", &admin).json(&alice);
    expect(r, StatusCode::CREATED).await;

    // A viewer reads but cannot reach admin routes.
    let r = bearer(&node, Method::GET, "/api/session", &viewer);
    let s = body(expect(r, StatusCode::OK).await).await;
    assert_eq!(s["user"], "token:grafana");
    assert_eq!(s["role"], "viewer");
    get_as(&node, "/api/tokens", &viewer, StatusCode::FORBIDDEN).await;
    get_as(&node, "/api/users", &viewer, StatusCode::FORBIDDEN).await;
    let r = bearer(&node, Method::POST, "/api/tokens", &viewer).json(&json!({"name": "x"}));
    expect(r, StatusCode::FORBIDDEN).await;

    // Wrong and malformed credentials.
    let wrong = "sc_not-a-token";
    get_as(&node, "/api/users", wrong, StatusCode::UNAUTHORIZED).await;
    let basic = plain()
        .get(node.at("/api/users"))
        .header(AUTHORIZATION, format!("Basic {admin}"));
    expect(basic, StatusCode::UNAUTHORIZED).await;

    // Only hashes are stored.
    let all = dump(&registry).await;
    for raw in [&admin, &viewer, &ENV_TOKEN.to_owned()] {
        assert!(!all.contains(raw.as_str()), "a raw token in the registry");
        let suffix = raw.strip_prefix("sc_").unwrap_or(raw);
        assert!(!all.contains(suffix), "a raw token in the registry");
    }
    let (rec, _) = value_of(&registry, &format!("console/tokens/{admin_id}"))
        .await
        .unwrap();
    assert_eq!(rec["sha256"].as_str().unwrap().len(), 64);

    // Revoked: 401 at once on this node.
    let viewer_path = format!("/api/tokens/{viewer_id}");
    let revoke = || bearer(&node, Method::DELETE, &viewer_path, &admin);
    expect(revoke(), StatusCode::NO_CONTENT).await;
    get_as(&node, "/api/session", &viewer, StatusCode::UNAUTHORIZED).await;
    expect(revoke(), StatusCode::NOT_FOUND).await;
    let r = send(bearer(&node, Method::GET, "/api/tokens", &admin)).await;
    let ids: Vec<String> = body(r).await["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    let mut want = vec![admin_id.clone(), "env-admin".to_owned()];
    want.sort();
    assert_eq!(ids, want);

    // Bad input names the field.
    for (input, field) in [
        (json!({"role": "admin"}), "name"),
        (json!({"name": "", "role": "admin"}), "name"),
        (json!({"name": "x", "role": "root"}), "role"),
        (json!({"name": 7}), "name"),
    ] {
        let r = send(bearer(&node, Method::POST, "/api/tokens", &admin).json(&input)).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{input}");
        assert_eq!(body(r).await["field"], field, "{input}");
    }
}

#[tokio::test]
async fn revoked_tokens_stop_working_on_other_nodes_too() {
    let registry = Arc::new(MemoryRegistry::new());
    let opts = AuthOptions {
        admin_token: Some(ENV_TOKEN.into()),
        ..Default::default()
    };
    let (a, _) = init(&registry, opts.clone()).await;
    let (b, _) = init(&registry, opts).await;
    let (a, b) = (serve(&registry, a).await, serve(&registry, b).await);
    // b has the token list cached; a token created on a works on b at once.
    get_as(&b, "/api/session", ENV_TOKEN, StatusCode::OK).await;
    let (id, token) = create_token(&a, ENV_TOKEN, "short-lived", "viewer").await;
    get_as(&b, "/api/session", &token, StatusCode::OK).await;
    let revoke = bearer(&a, Method::DELETE, &format!("/api/tokens/{id}"), ENV_TOKEN);
    expect(revoke, StatusCode::NO_CONTENT).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    get_as(&b, "/api/session", &token, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn the_env_admin_token_is_seeded_once() {
    let registry = Arc::new(MemoryRegistry::new());
    let opts = AuthOptions {
        admin_token: Some(ENV_TOKEN.into()),
        ..Default::default()
    };
    // Two nodes starting together, then a restart.
    let ((a, _), (_b, _)) =
        tokio::join!(init(&registry, opts.clone()), init(&registry, opts.clone()));
    let (rec, rev) = value_of(&registry, "console/tokens/env-admin")
        .await
        .unwrap();
    assert_eq!(rec["role"], "admin");
    let (_c, _) = init(&registry, opts).await;
    assert_eq!(
        value_of(&registry, "console/tokens/env-admin")
            .await
            .unwrap()
            .1,
        rev,
        "not rewritten at restart"
    );
    let tokens = registry
        .range(RangeRequest::prefix("console/tokens/"))
        .await
        .unwrap();
    assert_eq!(tokens.kvs.len(), 1);
    assert!(!dump(&registry).await.contains(ENV_TOKEN));

    let node = serve(&registry, a).await;
    get_as(&node, "/api/users", ENV_TOKEN, StatusCode::OK).await;
    let r = send(bearer(&node, Method::GET, "/api/session", ENV_TOKEN)).await;
    assert_eq!(body(r).await["role"], "admin");

    // A new SHARDCRON_ADMIN_TOKEN replaces the old one.
    let new_token = "a-brand-new-admin-token-42";
    let (d, _) = init(
        &registry,
        AuthOptions {
            admin_token: Some(new_token.into()),
            ..Default::default()
        },
    )
    .await;
    let node = serve(&registry, d).await;
    get_as(&node, "/api/users", new_token, StatusCode::OK).await;
    get_as(&node, "/api/users", ENV_TOKEN, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn users_roles_and_passwords() {
    let (_registry, node) = start().await;
    let admin = browser();
    let csrf = csrf_login(&admin, &node, "admin", PASSWORD).await;
    let post_user = || change(&admin, &node, Method::POST, "/api/users", &csrf);
    for (input, field) in [
        (json!({"password": PASSWORD, "role": "viewer"}), "name"),
        (json!({"name": "bad/name", "password": PASSWORD}), "name"),
        (
            json!({"name": "a".repeat(65), "password": PASSWORD}),
            "name",
        ),
        (json!({"name": "bob", "password": "too short"}), "password"),
        (
            json!({"name": "bob", "password": PASSWORD, "role": "root"}),
            "role",
        ),
    ] {
        let r = send(post_user().json(&input)).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{input}");
        assert_eq!(body(r).await["field"], field, "{input}");
    }
    let not_json = post_user()
        .header("Content-Type", "application/json")
        .body("{not json");
    let r = expect(not_json, StatusCode::BAD_REQUEST).await;
    assert_eq!(body(r).await["field"], "body");

    let viewer_bob = json!({"name": "bob", "password": PASSWORD, "role": "viewer"});
    expect(post_user().json(&viewer_bob), StatusCode::CREATED).await;
    let admin_bob = json!({"name": "bob", "password": PASSWORD, "role": "admin"});
    expect(post_user().json(&admin_bob), StatusCode::CONFLICT).await;

    // bob is a viewer: reads, but no admin routes; may change his own password.
    let bob = browser();
    let bob_csrf = csrf_login(&bob, &node, "bob", PASSWORD).await;
    let bob_changes = |method, path: &str| change(&bob, &node, method, path, &bob_csrf);
    expect(bob.get(node.at("/api/users")), StatusCode::FORBIDDEN).await;
    let r = bob_changes(Method::DELETE, "/api/users/admin");
    expect(r, StatusCode::FORBIDDEN).await;
    let r = bob_changes(Method::PUT, "/api/users/admin/password")
        .json(&json!({"password": "taking over the admin"}));
    expect(r, StatusCode::FORBIDDEN).await;
    // Another session of bob, which his password change ends.
    let bob_elsewhere = plain();
    let r = try_login(&bob_elsewhere, &node, "bob", PASSWORD).await;
    let (_, other_id) = session_cookie(&r);
    let r = bob_changes(Method::PUT, "/api/users/bob/password")
        .json(&json!({"password": "bob's new password"}));
    expect(r, StatusCode::NO_CONTENT).await;
    // The session that changed it goes on; other sessions end.
    expect(bob.get(node.at("/api/session")), StatusCode::OK).await;
    let other = with_session(&node, Method::GET, "/api/session", &other_id);
    expect(other, StatusCode::UNAUTHORIZED).await;
    assert_eq!(
        try_login(&plain(), &node, "bob", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    login(&plain(), &node, "bob", "bob's new password").await;

    // The last admin cannot go.
    let admin_deletes = |path: &str| change(&admin, &node, Method::DELETE, path, &csrf);
    expect(admin_deletes("/api/users/admin"), StatusCode::CONFLICT).await;
    // Deleting bob ends his sessions.
    expect(admin_deletes("/api/users/bob"), StatusCode::NO_CONTENT).await;
    expect(bob.get(node.at("/api/session")), StatusCode::UNAUTHORIZED).await;
    expect(admin_deletes("/api/users/bob"), StatusCode::NOT_FOUND).await;

    // A second admin: now either may go, but not both.
    let carol = json!({"name": "carol", "password": PASSWORD, "role": "admin"});
    expect(post_user().json(&carol), StatusCode::CREATED).await;
    let users = body(send(admin.get(node.at("/api/users"))).await).await;
    let names: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "carol"]);
    assert_eq!(users["users"][1]["role"], "admin");
    assert!(users["users"][1]["created_at"].is_string());
    assert!(users["users"][1].get("password_hash").is_none());
    let carol = browser();
    let carol_csrf = csrf_login(&carol, &node, "carol", PASSWORD).await;
    let carol_deletes_admin = change(
        &carol,
        &node,
        Method::DELETE,
        "/api/users/admin",
        &carol_csrf,
    );
    let (by_admin, by_carol) = tokio::join!(
        admin_deletes("/api/users/carol").send(),
        carol_deletes_admin.send(),
    );
    let mut statuses = [by_admin.unwrap().status(), by_carol.unwrap().status()];
    statuses.sort();
    // One wins; the other is refused (last admin), or, if it lost its own
    // account first, no longer authenticated.
    assert_eq!(statuses[0], StatusCode::NO_CONTENT, "{statuses:?}");
    assert!(
        matches!(statuses[1], StatusCode::CONFLICT | StatusCode::UNAUTHORIZED),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn secure_cookies_when_asked() {
    let (_registry, node) = start_with(AuthOptions {
        admin_password: Some(PASSWORD.into()),
        secure_cookies: true,
        ..Default::default()
    })
    .await;
    let r = try_login(&plain(), &node, "admin", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK);
    let (set_cookie, _) = session_cookie(&r);
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure"] {
        assert!(set_cookie.contains(flag), "{flag} in {set_cookie}");
    }
}
