//! The API client the `warren` commands use: where the API is and the account
//! and token come from flags, then `WARREN_API` / `WARREN_API_TOKEN` /
//! `WARREN_ACCOUNT_ID`, then the profile.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::Value;
use warren_api::{Envelope, FieldError};

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

    /// Sends `method` to `…/accounts/{account}/{path}` with an optional
    /// `(content type, bytes)` body and reads the envelope: the answer with
    /// its result typed as `T` on success, the API's first error (an
    /// [`ApiFailure`]) otherwise.
    pub async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Bytes)>,
    ) -> anyhow::Result<Envelope<T>> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let envelope: Envelope<Value> = serde_json::from_slice(&bytes).map_err(|_| {
            anyhow::anyhow!("the API answered {status} with a body that is not its JSON envelope")
        })?;
        if !envelope.success {
            let e = envelope.first_error();
            return Err(ApiFailure {
                status,
                message: e.message,
                pointer: e.source.map(|s| s.pointer),
            }
            .into());
        }
        let result = match envelope.result {
            None => None,
            Some(v) => Some(serde_path_to_error::deserialize(v).map_err(|e| {
                anyhow::anyhow!(
                    "the API's answer to {path} is not what this warren expects at {}: {}",
                    e.path(),
                    e.inner()
                )
            })?),
        };
        Ok(Envelope {
            success: true,
            errors: envelope.errors,
            messages: envelope.messages,
            result,
            result_info: envelope.result_info,
        })
    }

    /// Sends `method` with `body` as JSON (if any) and returns the result.
    async fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<T> {
        let body = body
            .map(|b| serde_json::to_vec(b).map(|j| ("application/json", Bytes::from(j))))
            .transpose()?;
        self.request(method, path, body)
            .await?
            .result
            .ok_or_else(|| anyhow::anyhow!("the API answered {path} without a result"))
    }

    /// `GET` of a resource or list.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.json::<(), T>(Method::GET, path, None).await
    }

    /// `POST` of `body`.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.json(Method::POST, path, Some(body)).await
    }

    /// `PUT` of `body`.
    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.json(Method::PUT, path, Some(body)).await
    }

    /// `DELETE`; whatever the result, it is not read.
    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.request::<IgnoredAny>(Method::DELETE, path, None)
            .await
            .map(drop)
    }
}

/// A request the CLI refuses before sending: the same words and field as the
/// API would answer with.
pub fn refused(e: FieldError) -> anyhow::Error {
    ApiFailure {
        status: 400,
        message: e.to_string(),
        pointer: Some(e.pointer),
    }
    .into()
}
