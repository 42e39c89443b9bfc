//! The API client the `warren` commands use: where the API is and the account
//! and token come from flags, then `WARREN_API` / `WARREN_API_TOKEN` /
//! `WARREN_ACCOUNT_ID`, then the profile.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::profile;

/// Flags every API command accepts.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ApiFlags {
    /// API base URL (default: WARREN_API, then the profile).
    #[arg(long, global = true)]
    pub api: Option<String>,
    /// API token (default: WARREN_API_TOKEN, then the profile).
    #[arg(long, global = true)]
    pub api_token: Option<String>,
    /// Account id (default: WARREN_ACCOUNT_ID, then the profile).
    #[arg(long, global = true)]
    pub account_id: Option<String>,
}

/// A client for one account.
pub struct Client {
    host: String,
    base_path: String,
    account: String,
    token: String,
}

/// An error the API answered with.
#[derive(Debug, thiserror::Error)]
#[error("{message}{}", pointer.as_ref().map(|p| format!(" (field {p})")).unwrap_or_default())]
pub struct ApiFailure {
    /// HTTP status.
    pub status: u16,
    /// The API's message.
    pub message: String,
    /// The offending field, if any.
    pub pointer: Option<String>,
}

impl Client {
    /// Builds a client from flags, environment and profile.
    pub fn new(flags: &ApiFlags) -> anyhow::Result<Client> {
        let profile = profile::read()?;
        let pick = |flag: &Option<String>, env: &str, from_profile: Option<&str>| {
            flag.clone()
                .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
                .or_else(|| from_profile.map(str::to_owned))
        };
        let missing = |what: &str, flag: &str, env: &str| {
            anyhow::anyhow!(
                "no {what}: pass {flag}, set {env}, or start an edge (`warren serve`) to write a profile at {}",
                profile::path().display()
            )
        };
        let api = pick(
            &flags.api,
            "WARREN_API",
            profile.as_ref().map(|p| p.api.as_str()),
        )
        .ok_or_else(|| missing("API address", "--api", "WARREN_API"))?;
        let token = pick(
            &flags.api_token,
            "WARREN_API_TOKEN",
            profile.as_ref().map(|p| p.token.as_str()),
        )
        .ok_or_else(|| missing("API token", "--api-token", "WARREN_API_TOKEN"))?;
        let account = pick(
            &flags.account_id,
            "WARREN_ACCOUNT_ID",
            profile.as_ref().map(|p| p.account_id.as_str()),
        )
        .ok_or_else(|| missing("account id", "--account-id", "WARREN_ACCOUNT_ID"))?;
        let rest = api.strip_prefix("http://").ok_or_else(|| {
            anyhow::anyhow!("the API address must start with http:// (got {api})")
        })?;
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        Ok(Client {
            host: host.to_owned(),
            base_path: if path.is_empty() {
                String::new()
            } else {
                format!("/{}", path.trim_end_matches('/'))
            },
            account,
            token,
        })
    }

    /// A client for `api` (an `http://` URL), `account` and `token`.
    pub fn with(api: &str, account: &str, token: &str) -> anyhow::Result<Client> {
        Client::new(&ApiFlags {
            api: Some(api.to_owned()),
            api_token: Some(token.to_owned()),
            account_id: Some(account.to_owned()),
        })
    }

    /// Sends `method` to `…/accounts/{account}/{path}` with an optional
    /// `(content type, bytes)` body and returns the raw response.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Bytes)>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let uri = format!(
            "{}/client/v4/accounts/{}/{path}",
            self.base_path, self.account
        );
        let tcp = tokio::net::TcpStream::connect(&self.host)
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the API at {}: {e}", self.host))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", &self.host)
            .header("authorization", format!("Bearer {}", self.token));
        let payload = match body {
            Some((ctype, bytes)) => {
                req = req.header("content-type", ctype);
                bytes
            }
            None => Bytes::new(),
        };
        Ok(sender.send_request(req.body(Full::new(payload))?).await?)
    }

    /// Calls `method` on `…/accounts/{account}/{path}` and returns the envelope's result
    /// (and `result_info` for lists).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(Value, Value)> {
        let body = body.map(|b| ("application/json", Bytes::from(b.to_string())));
        self.call_raw(method, path, body).await
    }

    /// Like [`Client::call`] with a body of any content type.
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Bytes)>,
    ) -> anyhow::Result<(Value, Value)> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| {
            anyhow::anyhow!("the API answered {status} with a body that is not JSON")
        })?;
        if v["success"] != Value::Bool(true) {
            let e = &v["errors"][0];
            return Err(ApiFailure {
                status,
                message: e["message"].as_str().unwrap_or("request failed").to_owned(),
                pointer: e["source"]["pointer"].as_str().map(str::to_owned),
            }
            .into());
        }
        Ok((v["result"].clone(), v["result_info"].clone()))
    }
}
