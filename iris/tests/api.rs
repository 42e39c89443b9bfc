//! The tunnels and VPC services API over real HTTP, with a real SQLite store:
//! envelopes, auth, pagination, filters and every validation rule of docs/api.md.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use warren_iris::api::{ApiState, router};
use warren_iris::sealing::Sealer;
use warren_iris::tunnel_admin::TunnelAdmin;
use warren_protocol::token::TunnelToken;
use warren_store::{SqliteStore, Store, hash_secret, secret_matches};

struct Api {
    addr: SocketAddr,
    store: Arc<SqliteStore>,
    a: String,
    b: String,
    _dir: tempfile::TempDir,
}

const TOKEN_A: &str = "token-of-account-a-0123456789";
const TOKEN_B: &str = "token-of-account-b-0123456789";

async fn start() -> Api {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(&dir.path().join("w.db")).expect("store"));
    let a = store.create_account("a").await.expect("account").id;
    let b = store.create_account("b").await.expect("account").id;
    store
        .create_api_token(&a, "admin", hash_secret(TOKEN_A.as_bytes()))
        .await
        .expect("token");
    store
        .create_api_token(&b, "admin", hash_secret(TOKEN_B.as_bytes()))
        .await
        .expect("token");
    let admin = TunnelAdmin {
        edges: vec!["127.0.0.1:7844".into()],
        ca_sha256: "ab".repeat(32),
        tcp_port: None,
        sealer: Sealer::load_or_create(dir.path()).expect("sealer"),
    };
    let state = ApiState {
        store: store.clone(),
        admin: Arc::new(admin),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    Api {
        addr,
        store,
        a,
        b,
        _dir: dir,
    }
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.raw(method, path, token, body.map(|b| b.to_string()))
            .await
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> (StatusCode, Value) {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "api");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn tunnels(&self, account: &str) -> String {
        format!("/client/v4/accounts/{account}/cfd_tunnel")
    }

    fn services(&self, account: &str) -> String {
        format!("/client/v4/accounts/{account}/connectivity/directory/services")
    }

    async fn tunnel(&self, name: &str) -> String {
        let (s, v) = self
            .call(
                Method::POST,
                &self.tunnels(&self.a),
                Some(TOKEN_A),
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["result"]["id"].as_str().expect("id").to_owned()
    }
}

fn error_pointer(v: &Value) -> Option<&str> {
    v["errors"][0]["source"]["pointer"].as_str()
}

#[tokio::test]
async fn auth_is_per_account_and_gives_no_hints() {
    let api = start().await;
    let path = api.tunnels(&api.a);
    let (s, v) = api.call(Method::GET, &path, None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["success"], json!(false));
    let (s2, v2) = api
        .call(Method::GET, &path, Some("not-a-token"), None)
        .await;
    assert_eq!(
        (s2, &v2),
        (StatusCode::UNAUTHORIZED, &v),
        "the same answer for missing and wrong tokens"
    );
    let (s, _) = api
        .call(
            Method::GET,
            &api.tunnels("no-such-account"),
            Some("not-a-token"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = api.call(Method::GET, &path, Some(TOKEN_B), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(v["errors"][0]["code"], json!(10000));
}

#[tokio::test]
async fn tunnels_create_list_page_token_and_delete() {
    let api = start().await;
    let (s, v) = api
        .call(
            Method::POST,
            &api.tunnels(&api.a),
            Some(TOKEN_A),
            Some(json!({ "name": "home-lab" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let t = &v["result"];
    assert_eq!(t["name"], json!("home-lab"));
    assert_eq!(t["account_tag"], json!(api.a));
    assert_eq!(t["status"], json!("inactive"));
    assert_eq!(t["connections"], json!([]));
    let id = t["id"].as_str().expect("id").to_owned();
    let token = TunnelToken::decode(t["token"].as_str().expect("token")).expect("valid token");
    assert_eq!(token.tunnel_id, id);
    let stored = api
        .store
        .get_tunnel(&id)
        .await
        .expect("store")
        .expect("tunnel");
    assert!(secret_matches(
        &stored.secret_hash,
        &token.secret_bytes().expect("secret")
    ));

    // The token can be read again, and is the same.
    let (s, v) = api
        .call(
            Method::GET,
            &format!("{}/{id}/token", api.tunnels(&api.a)),
            Some(TOKEN_A),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        TunnelToken::decode(v["result"].as_str().expect("token")).expect("token"),
        token
    );

    // A secret of the caller's choosing; too short is refused.
    let secret = base64_of(&[3u8; 32]);
    let (s, v) = api
        .call(
            Method::POST,
            &api.tunnels(&api.a),
            Some(TOKEN_A),
            Some(json!({ "name": "x", "tunnel_secret": secret })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = api
        .call(
            Method::POST,
            &api.tunnels(&api.a),
            Some(TOKEN_A),
            Some(json!({ "name": "x", "tunnel_secret": base64_of(&[1; 8]) })),
        )
        .await;
    assert_eq!(
        (s, error_pointer(&v)),
        (StatusCode::BAD_REQUEST, Some("/tunnel_secret"))
    );
    let (s, v) = api
        .call(
            Method::POST,
            &api.tunnels(&api.a),
            Some(TOKEN_A),
            Some(json!({ "nme": "typo" })),
        )
        .await;
    assert_eq!(
        (s, error_pointer(&v)),
        (StatusCode::BAD_REQUEST, Some("/nme"))
    );
    let (s, _) = api
        .raw(
            Method::POST,
            &api.tunnels(&api.a),
            Some(TOKEN_A),
            Some("{not json".into()),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    api.tunnel("third").await;
    let (s, v) = api
        .call(
            Method::GET,
            &format!("{}?per_page=2&page=2", api.tunnels(&api.a)),
            Some(TOKEN_A),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v["result_info"],
        json!({ "page": 2, "per_page": 2, "count": 1, "total_count": 3 })
    );
    let (s, v) = api
        .call(
            Method::GET,
            &format!("{}?per_page=1001", api.tunnels(&api.a)),
            Some(TOKEN_A),
            None,
        )
        .await;
    assert_eq!(
        (s, error_pointer(&v)),
        (StatusCode::BAD_REQUEST, Some("/per_page"))
    );
    let (_, v) = api
        .call(Method::GET, &api.tunnels(&api.b), Some(TOKEN_B), None)
        .await;
    assert_eq!(v["result"], json!([]), "account b sees none of a's tunnels");
    let (s, _) = api
        .call(
            Method::GET,
            &format!("{}/{id}", api.tunnels(&api.b)),
            Some(TOKEN_B),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Deleting a tunnel a service names is refused, then allowed.
    let service = json!({ "type": "http", "name": "svc", "host": { "ipv4": "10.0.0.5", "network": { "tunnel_id": id } } });
    let (_, v) = api
        .call(
            Method::POST,
            &api.services(&api.a),
            Some(TOKEN_A),
            Some(service),
        )
        .await;
    let service_id = v["result"]["service_id"]
        .as_str()
        .expect("service id")
        .to_owned();
    let (s, v) = api
        .call(
            Method::DELETE,
            &format!("{}/{id}", api.tunnels(&api.a)),
            Some(TOKEN_A),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .expect("message")
            .contains("used by 1 VPC service")
    );
    api.call(
        Method::DELETE,
        &format!("{}/{service_id}", api.services(&api.a)),
        Some(TOKEN_A),
        None,
    )
    .await;
    let (s, v) = api
        .call(
            Method::DELETE,
            &format!("{}/{id}", api.tunnels(&api.a)),
            Some(TOKEN_A),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = api
        .call(
            Method::GET,
            &format!("{}/{id}", api.tunnels(&api.a)),
            Some(TOKEN_A),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[tokio::test]
async fn services_round_trip_with_defaults_filters_and_replacement() {
    let api = start().await;
    let tunnel = api.tunnel("t").await;
    let body = json!({
        "type": "http", "name": "inventory-api",
        "host": { "hostname": "Inventory.internal.example", "resolver_network": { "tunnel_id": tunnel, "resolver_ips": ["10.0.0.2"] } }
    });
    let (s, v) = api
        .call(
            Method::POST,
            &api.services(&api.a),
            Some(TOKEN_A),
            Some(body),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let svc = v["result"].clone();
    assert_eq!(svc["http_port"], json!(80));
    assert_eq!(svc["https_port"], json!(443));
    assert_eq!(
        svc["tls_settings"]["cert_verification_mode"],
        json!("verify_full")
    );
    assert_eq!(svc["host"]["hostname"], json!("inventory.internal.example"));
    assert_eq!(
        svc["host"]["resolver_network"]["resolver_ips"],
        json!(["10.0.0.2"])
    );
    let id = svc["service_id"].as_str().expect("id").to_owned();

    let tcp = json!({ "type": "tcp", "name": "db", "tcp_port": 5432, "host": { "ipv6": "fd00::5", "network": { "tunnel_id": tunnel } } });
    let (s, v) = api
        .call(
            Method::POST,
            &api.services(&api.a),
            Some(TOKEN_A),
            Some(tcp),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = api
        .call(
            Method::GET,
            &format!("{}?type=http", api.services(&api.a)),
            Some(TOKEN_A),
            None,
        )
        .await;
    assert_eq!(v["result_info"]["total_count"], json!(1));
    assert_eq!(v["result"][0]["service_id"], json!(id));
    let (_, v) = api
        .call(
            Method::GET,
            &format!("{}?type=tcp", api.services(&api.a)),
            Some(TOKEN_A),
            None,
        )
        .await;
    assert_eq!(v["result"][0]["tcp_port"], json!(5432));

    // Only https: http is then refused at the front door (its port is null).
    let mut put = svc.clone();
    put["http_port"] = Value::Null;
    put["host"] =
        json!({ "ipv4": "10.1.2.3", "ipv6": "fd00::1", "network": { "tunnel_id": tunnel } });
    put["tls_settings"] = json!({ "cert_verification_mode": "verify_ca" });
    let (s, v) = api
        .call(
            Method::PUT,
            &format!("{}/{id}", api.services(&api.a)),
            Some(TOKEN_A),
            Some(put),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let r = &v["result"];
    assert_eq!(
        (r["service_id"].clone(), r["created_at"].clone()),
        (svc["service_id"].clone(), svc["created_at"].clone())
    );
    assert_eq!(r["http_port"], Value::Null);
    assert_eq!(r["host"]["ipv6"], json!("fd00::1"));
    assert_eq!(
        r["tls_settings"]["cert_verification_mode"],
        json!("verify_ca")
    );
    let (_, got) = api
        .call(
            Method::GET,
            &format!("{}/{id}", api.services(&api.a)),
            Some(TOKEN_A),
            None,
        )
        .await;
    assert_eq!(&got["result"], r);

    let (s, _) = api
        .call(
            Method::GET,
            &format!("{}/{id}", api.services(&api.b)),
            Some(TOKEN_B),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another account cannot see it");
    let (s, v) = api
        .call(
            Method::DELETE,
            &format!("{}/{id}", api.services(&api.a)),
            Some(TOKEN_A),
            None,
        )
        .await;
    assert_eq!((s, &v["result"]), (StatusCode::OK, &Value::Null));
    let (s, _) = api
        .call(
            Method::GET,
            &format!("{}/{id}", api.services(&api.a)),
            Some(TOKEN_A),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn invalid_services_name_the_field() {
    let api = start().await;
    let tunnel = api.tunnel("t").await;
    let foreign = {
        let (_, v) = api
            .call(
                Method::POST,
                &api.tunnels(&api.b),
                Some(TOKEN_B),
                Some(json!({ "name": "b" })),
            )
            .await;
        v["result"]["id"].as_str().expect("id").to_owned()
    };
    let named = |h: &str| json!({ "type": "http", "name": "s", "host": { "hostname": h, "resolver_network": { "tunnel_id": tunnel } } });
    let mut cases = vec![
        (
            named("http://inventory.internal"),
            "/host/hostname",
            "scheme",
        ),
        (named("inventory.internal/items"), "/host/hostname", "path"),
        (named("inventory.internal:8080"), "/host/hostname", "port"),
        (named("10.0.0.1"), "/host/hostname", "IP address"),
        (named("in valid"), "/host/hostname", "whitespace"),
        (named(&"a".repeat(254)), "/host/hostname", "253"),
    ];
    let mut port = named("ok.internal");
    port["http_port"] = json!(70000);
    cases.push((port, "/http_port", "65535"));
    let mut zero = named("ok.internal");
    zero["https_port"] = json!(0);
    cases.push((zero, "/https_port", "65535"));
    cases.push((
        json!({ "type": "http", "name": "s", "host": { "hostname": "a.internal", "ipv4": "10.0.0.1", "resolver_network": { "tunnel_id": tunnel } } }),
        "/host",
        "exactly one",
    ));
    cases.push((
        json!({ "type": "http", "name": "s", "host": { "hostname": "a.internal", "resolver_network": { "tunnel_id": foreign } } }),
        "/host/resolver_network/tunnel_id",
        "no tunnel",
    ));
    let mut unknown = named("ok.internal");
    unknown["bogus"] = json!(1);
    cases.push((unknown, "/bogus", "unknown field"));
    cases.push((
        json!({ "type": "http", "name": "s", "host": { "hostname": "a.internal", "resolver_network": { "tunnel_id": tunnel, "extra": 1 } } }),
        "/host/resolver_network/extra",
        "unknown field",
    ));
    cases.push((
        json!({ "type": "http", "name": "s", "host": { "ipv4": "300.1.1.1", "network": { "tunnel_id": tunnel } } }),
        "/host/ipv4",
        "IPv4",
    ));
    let mut mode = named("ok.internal");
    mode["tls_settings"] = json!({ "cert_verification_mode": "sometimes" });
    cases.push((mode, "/tls_settings/cert_verification_mode", "verify_full"));
    cases.push((
        json!({ "type": "ftp", "name": "s", "host": {} }),
        "/type",
        "http",
    ));
    for (body, pointer, words) in cases {
        let (s, v) = api
            .call(
                Method::POST,
                &api.services(&api.a),
                Some(TOKEN_A),
                Some(body.clone()),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error_pointer(&v), Some(pointer), "{body} → {v}");
        assert_eq!(v["errors"][0]["code"], json!(1002));
        let message = v["errors"][0]["message"].as_str().expect("message");
        assert!(
            message.contains(words),
            "{message:?} should mention {words:?}"
        );
    }
    let (_, v) = api
        .call(Method::GET, &api.services(&api.a), Some(TOKEN_A), None)
        .await;
    assert_eq!(
        v["result_info"]["total_count"],
        json!(0),
        "nothing was stored"
    );
}

#[tokio::test]
async fn a_service_a_stored_worker_binds_cannot_be_deleted() {
    let api = start().await;
    let tunnel = api.tunnel("t").await;
    let body = json!({ "type": "http", "name": "svc", "host": { "ipv4": "10.0.0.5", "network": { "tunnel_id": tunnel } } });
    let (s, v) = api
        .call(
            Method::POST,
            &api.services(&api.a),
            Some(TOKEN_A),
            Some(body),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let id = v["result"]["service_id"].as_str().expect("id").to_owned();
    // A worker binding it, as the runtime stores it (any process may have).
    let script = warren_store::ScriptRecord {
        name: "shop".into(),
        account_id: api.a.clone(),
        tag: "tag-1".into(),
        metadata: "{}".into(),
        services: vec![id.clone()],
        routes: vec![],
        bundle: "00".repeat(32),
        secrets: Default::default(),
        created_on: "2026-01-01T00:00:00Z".into(),
        modified_on: "2026-01-01T00:00:00Z".into(),
    };
    assert!(api.store.put_script(&script, None).await.expect("store"));
    let path = format!("{}/{id}", api.services(&api.a));
    let (s, v) = api.call(Method::DELETE, &path, Some(TOKEN_A), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["errors"][0]["code"], json!(1004));
    assert_eq!(
        v["errors"][0]["message"],
        json!(format!(
            "service {id} is bound by worker(s) shop; remove the bindings first"
        ))
    );
    assert!(
        api.store
            .delete_script(&api.a, "shop")
            .await
            .expect("store")
    );
    let (s, v) = api.call(Method::DELETE, &path, Some(TOKEN_A), None).await;
    assert_eq!((s, &v["result"]), (StatusCode::OK, &Value::Null), "{v}");
}

#[tokio::test]
async fn bodies_are_checked_after_the_token() {
    let api = start().await;
    let (s, _) = api
        .raw(
            Method::POST,
            &api.services(&api.a),
            None,
            Some("{not json".into()),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = api
        .raw(
            Method::POST,
            &api.services(&api.a),
            Some(TOKEN_A),
            Some("[]".into()),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        v["errors"][0]["message"],
        json!("the body must be a JSON object")
    );
    let (s, v) = api
        .call(
            Method::GET,
            &format!("{}?type=ftp", api.services(&api.a)),
            Some(TOKEN_A),
            None,
        )
        .await;
    assert_eq!(
        (s, error_pointer(&v)),
        (StatusCode::BAD_REQUEST, Some("/type"))
    );
}
