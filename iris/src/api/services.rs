//! `/client/v4/accounts/{account_id}/connectivity/directory/services`: VPC
//! services, validated with the rules of docs/api.md (each failure names its field).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::SystemTime;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use serde_json::{Map, Value, json};
use warren_store::{CertVerificationMode, ServiceHost, ServiceType, VpcService, rfc3339};

use super::envelope::{ApiError, object, ok, only_keys, page};
use super::{ApiState, authorize};

const BASE: &str = "/client/v4/accounts/{account_id}/connectivity/directory/services";

pub(super) fn routes() -> Router<ApiState> {
    Router::new().route(BASE, get(list).post(create)).route(
        &format!("{BASE}/{{service_id}}"),
        get(show).put(replace).delete(remove),
    )
}

/// The API shape of a stored service.
pub fn service_json(s: &VpcService) -> Value {
    let host = match &s.host {
        ServiceHost::Hostname {
            hostname,
            tunnel_id,
            resolver_ips,
        } => {
            let mut net = json!({ "tunnel_id": tunnel_id });
            if !resolver_ips.is_empty() {
                net["resolver_ips"] = json!(
                    resolver_ips
                        .iter()
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                );
            }
            json!({ "hostname": hostname, "resolver_network": net })
        }
        ServiceHost::Addresses {
            ipv4,
            ipv6,
            tunnel_id,
        } => {
            let mut h = json!({ "network": { "tunnel_id": tunnel_id } });
            if let Some(a) = ipv4 {
                h["ipv4"] = json!(a.to_string());
            }
            if let Some(a) = ipv6 {
                h["ipv6"] = json!(a.to_string());
            }
            h
        }
    };
    let mode = match s.cert_verification_mode {
        CertVerificationMode::VerifyFull => "verify_full",
        CertVerificationMode::VerifyCa => "verify_ca",
        CertVerificationMode::Disabled => "disabled",
    };
    let mut v = json!({
        "service_id": s.id,
        "type": match s.service_type { ServiceType::Http => "http", ServiceType::Tcp => "tcp" },
        "name": s.name,
        "host": host,
        "tls_settings": { "cert_verification_mode": mode },
        "created_at": s.created_at,
        "updated_at": s.updated_at,
    });
    match s.service_type {
        ServiceType::Http => {
            v["http_port"] = json!(s.http_port);
            v["https_port"] = json!(s.https_port);
        }
        ServiceType::Tcp => v["tcp_port"] = json!(s.tcp_port),
    }
    v
}

/// A service as submitted, validated but not yet given an id.
struct Spec {
    service_type: ServiceType,
    name: String,
    http_port: Option<u16>,
    https_port: Option<u16>,
    tcp_port: Option<u16>,
    host: ServiceHost,
    mode: CertVerificationMode,
}

fn port(obj: &Map<String, Value>, key: &str) -> Result<Option<u16>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n @ 1..=65535) => Ok(Some(n as u16)),
            _ => Err(ApiError::invalid(
                &format!("/{key}"),
                "must be an integer from 1 to 65535",
            )),
        },
    }
}

fn string<'a>(obj: &'a Map<String, Value>, key: &str, at: &str) -> Result<&'a str, ApiError> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ApiError::invalid(
            &format!("{at}/{key}"),
            "must be a string",
        )),
        None => Err(ApiError::invalid(&format!("{at}/{key}"), "is required")),
    }
}

fn check_hostname(h: &str) -> Result<String, &'static str> {
    if h.contains("://") {
        return Err("must not contain a scheme");
    }
    if h.contains('/') {
        return Err("must not contain a path");
    }
    if h.chars().any(char::is_whitespace) {
        return Err("must not contain whitespace");
    }
    if h.parse::<IpAddr>().is_ok() || h.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
        return Err("must be a name, not an IP address (use ipv4/ipv6)");
    }
    if h.contains(':') {
        return Err("must not contain a port (ports are http_port/https_port)");
    }
    let name = h.trim_end_matches('.');
    if name.is_empty() || h.len() > 253 {
        return Err("must be 1 to 253 characters");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !name.split('.').all(label_ok) {
        return Err("is not a valid host name");
    }
    Ok(name.to_ascii_lowercase())
}

fn tunnel_ref(obj: &Map<String, Value>, key: &str) -> Result<(String, String), ApiError> {
    let at = format!("/host/{key}");
    let net = match obj.get(key) {
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ApiError::invalid(&at, "must be an object")),
        None => return Err(ApiError::invalid(&at, "is required")),
    };
    let allowed: &[&str] = if key == "resolver_network" {
        &["tunnel_id", "resolver_ips"]
    } else {
        &["tunnel_id"]
    };
    only_keys(net, &at, allowed)?;
    let tunnel = string(net, "tunnel_id", &at)?.to_owned();
    Ok((tunnel, at))
}

fn parse(obj: &Map<String, Value>) -> Result<Spec, ApiError> {
    only_keys(
        obj,
        "",
        &[
            "type",
            "name",
            "http_port",
            "https_port",
            "tcp_port",
            "host",
            "tls_settings",
            "service_id",
            "created_at",
            "updated_at",
        ],
    )?;
    let service_type = match string(obj, "type", "")? {
        "http" => ServiceType::Http,
        "tcp" => ServiceType::Tcp,
        _ => return Err(ApiError::invalid("/type", "must be \"http\" or \"tcp\"")),
    };
    let name = string(obj, "name", "")?;
    if name.trim().is_empty() || name.len() > 255 {
        return Err(ApiError::invalid("/name", "must be 1 to 255 characters"));
    }
    let (mut http_port, mut https_port) = (port(obj, "http_port")?, port(obj, "https_port")?);
    let tcp_port = port(obj, "tcp_port")?;
    match service_type {
        ServiceType::Http => {
            if obj.contains_key("tcp_port") {
                return Err(ApiError::invalid("/tcp_port", "only for type \"tcp\""));
            }
            if http_port.is_none() && https_port.is_none() {
                http_port = Some(80);
                https_port = Some(443);
            }
        }
        ServiceType::Tcp => {
            if tcp_port.is_none() {
                return Err(ApiError::invalid(
                    "/tcp_port",
                    "is required for type \"tcp\"",
                ));
            }
        }
    }
    let host = match obj.get("host") {
        Some(Value::Object(h)) => h,
        Some(_) => return Err(ApiError::invalid("/host", "must be an object")),
        None => return Err(ApiError::invalid("/host", "is required")),
    };
    let host = if host.contains_key("hostname") {
        if host.contains_key("ipv4") || host.contains_key("ipv6") {
            return Err(ApiError::invalid(
                "/host",
                "must be exactly one of hostname, or ipv4 and/or ipv6",
            ));
        }
        only_keys(host, "/host", &["hostname", "resolver_network"])?;
        let hostname = check_hostname(string(host, "hostname", "/host")?)
            .map_err(|m| ApiError::invalid("/host/hostname", m))?;
        let (tunnel_id, at) = tunnel_ref(host, "resolver_network")?;
        let mut resolver_ips = Vec::new();
        if let Some(Value::Object(net)) = host.get("resolver_network") {
            match net.get("resolver_ips") {
                None | Some(Value::Null) => {}
                Some(Value::Array(ips)) => {
                    for (i, v) in ips.iter().enumerate() {
                        let ip = v
                            .as_str()
                            .and_then(|s| s.parse::<IpAddr>().ok())
                            .ok_or_else(|| {
                                ApiError::invalid(
                                    &format!("{at}/resolver_ips/{i}"),
                                    "must be an IP address",
                                )
                            })?;
                        resolver_ips.push(ip);
                    }
                }
                Some(_) => {
                    return Err(ApiError::invalid(
                        &format!("{at}/resolver_ips"),
                        "must be a list of IP addresses",
                    ));
                }
            }
        }
        ServiceHost::Hostname {
            hostname,
            tunnel_id,
            resolver_ips,
        }
    } else if host.contains_key("ipv4") || host.contains_key("ipv6") {
        only_keys(host, "/host", &["ipv4", "ipv6", "network"])?;
        let ipv4 = match host.get("ipv4") {
            None => None,
            Some(v) => Some(
                v.as_str()
                    .and_then(|s| s.parse::<Ipv4Addr>().ok())
                    .ok_or_else(|| ApiError::invalid("/host/ipv4", "must be an IPv4 address"))?,
            ),
        };
        let ipv6 = match host.get("ipv6") {
            None => None,
            Some(v) => Some(
                v.as_str()
                    .and_then(|s| s.parse::<Ipv6Addr>().ok())
                    .ok_or_else(|| ApiError::invalid("/host/ipv6", "must be an IPv6 address"))?,
            ),
        };
        let (tunnel_id, _) = tunnel_ref(host, "network")?;
        ServiceHost::Addresses {
            ipv4,
            ipv6,
            tunnel_id,
        }
    } else {
        return Err(ApiError::invalid(
            "/host",
            "needs hostname, or ipv4 and/or ipv6",
        ));
    };
    let mode = match obj.get("tls_settings") {
        None | Some(Value::Null) => CertVerificationMode::VerifyFull,
        Some(Value::Object(t)) => {
            only_keys(t, "/tls_settings", &["cert_verification_mode"])?;
            match t.get("cert_verification_mode").and_then(Value::as_str) {
                None => CertVerificationMode::VerifyFull,
                Some("verify_full") => CertVerificationMode::VerifyFull,
                Some("verify_ca") => CertVerificationMode::VerifyCa,
                Some("disabled") => CertVerificationMode::Disabled,
                Some(_) => {
                    return Err(ApiError::invalid(
                        "/tls_settings/cert_verification_mode",
                        "must be verify_full, verify_ca or disabled",
                    ));
                }
            }
        }
        Some(_) => return Err(ApiError::invalid("/tls_settings", "must be an object")),
    };
    Ok(Spec {
        service_type,
        name: name.to_owned(),
        http_port,
        https_port,
        tcp_port,
        host,
        mode,
    })
}

/// Parses the body and checks the tunnel belongs to the account.
async fn spec(state: &ApiState, account: &str, body: &[u8]) -> Result<Spec, ApiError> {
    let spec = parse(&object(body)?)?;
    let tunnel_id = spec.host.tunnel_id();
    let owned = state
        .store
        .get_tunnel(tunnel_id)
        .await
        .map_err(ApiError::store)?
        .is_some_and(|t| t.account_id == account);
    if !owned {
        let pointer = match spec.host {
            ServiceHost::Hostname { .. } => "/host/resolver_network/tunnel_id",
            ServiceHost::Addresses { .. } => "/host/network/tunnel_id",
        };
        return Err(ApiError::invalid(
            pointer,
            format!("no tunnel {tunnel_id} in this account"),
        ));
    }
    Ok(spec)
}

fn build(spec: Spec, id: String, account: &str, created_at: String) -> VpcService {
    VpcService {
        id,
        account_id: account.to_owned(),
        name: spec.name,
        service_type: spec.service_type,
        http_port: spec.http_port,
        https_port: spec.https_port,
        tcp_port: spec.tcp_port,
        host: spec.host,
        cert_verification_mode: spec.mode,
        created_at,
        updated_at: rfc3339(SystemTime::now()),
    }
}

/// Authorizes the caller for `account`, then loads the resource of that account.
async fn find(
    state: &ApiState,
    headers: &HeaderMap,
    account: &str,
    id: &str,
) -> Result<VpcService, ApiError> {
    authorize(state, headers, account).await?;
    match state.store.get_service(id).await.map_err(ApiError::store)? {
        Some(s) if s.account_id == account => Ok(s),
        _ => Err(ApiError::not_found("service")),
    }
}

async fn create(
    State(state): State<ApiState>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &account).await?;
    let spec = spec(&state, &account, &body).await?;
    let service = build(
        spec,
        uuid::Uuid::new_v4().to_string(),
        &account,
        rfc3339(SystemTime::now()),
    );
    state
        .store
        .create_service(&service)
        .await
        .map_err(ApiError::store)?;
    Ok(ok(service_json(&service)))
}

async fn list(
    State(state): State<ApiState>,
    Path(account): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &account).await?;
    let wanted = match query.get("type").map(String::as_str) {
        None => None,
        Some("http") => Some(ServiceType::Http),
        Some("tcp") => Some(ServiceType::Tcp),
        Some(_) => return Err(ApiError::invalid("/type", "must be \"http\" or \"tcp\"")),
    };
    let items = state
        .store
        .list_services(&account)
        .await
        .map_err(ApiError::store)?
        .iter()
        .filter(|s| wanted.is_none_or(|t| t == s.service_type))
        .map(service_json)
        .collect();
    page(items, &query)
}

async fn show(
    State(state): State<ApiState>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    Ok(ok(service_json(
        &find(&state, &headers, &account, &id).await?,
    )))
}

async fn replace(
    State(state): State<ApiState>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let old = find(&state, &headers, &account, &id).await?;
    let spec = spec(&state, &account, &body).await?;
    let service = build(spec, old.id, &account, old.created_at);
    if !state
        .store
        .replace_service(&service)
        .await
        .map_err(ApiError::store)?
    {
        return Err(ApiError::not_found("service"));
    }
    Ok(ok(service_json(&service)))
}

async fn remove(
    State(state): State<ApiState>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let s = find(&state, &headers, &account, &id).await?;
    if let Some(users) = &state.service_users {
        let workers = users(&s.id);
        if !workers.is_empty() {
            return Err(ApiError::conflict(format!(
                "service {} is bound by worker(s) {}; remove the bindings first",
                s.id,
                workers.join(", ")
            )));
        }
    }
    state
        .store
        .delete_service(&account, &s.id)
        .await
        .map_err(ApiError::store)?;
    Ok(ok(Value::Null))
}
