//! The API client the `warren` commands use (HTTP/1.1 or HTTP/2, plain or
//! HTTPS, through the proxy `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` name
//! unless `NO_PROXY` excludes the host). Where the API is, the account, the
//! token and an extra CA to trust come from flags, then `WARREN_API` /
//! `WARREN_ACCOUNT_ID` / `WARREN_API_TOKEN` / `WARREN_CA_CERT`, then the
//! profile.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;
use serde::Serialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::Value;
use warren_api::accounts::AccountInfo;
use warren_api::{Envelope, FieldError};

use crate::profile;

/// How long a connection to the API may take to open (TCP and TLS).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one API call may take in all, body included (a deploy builds
/// the worker before it answers). Not applied to `warren tail`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Flags every API command accepts.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ApiFlags {
    /// API base URL, http:// or https:// (default: WARREN_API, then the profile).
    #[arg(long, global = true)]
    pub api: Option<String>,
    /// API token (default: WARREN_API_TOKEN, then the profile).
    #[arg(long, global = true)]
    pub api_token: Option<String>,
    /// Account id (default: WARREN_ACCOUNT_ID, then the profile).
    #[arg(long, global = true)]
    pub account_id: Option<String>,
    /// A CA certificate (PEM file) to trust for the API's HTTPS besides the
    /// system's (default: WARREN_CA_CERT, then the profile's).
    #[arg(long, global = true)]
    pub ca_cert: Option<std::path::PathBuf>,
}

/// A client for one account.
pub struct Client {
    http: reqwest::Client,
    /// The API URL without a trailing `/`.
    base: String,
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

/// Checks that `api` is an `http://` or `https://` URL with a host; the URL
/// without a trailing `/`.
pub fn api_url(api: &str) -> anyhow::Result<String> {
    let rest = api
        .strip_prefix("https://")
        .or_else(|| api.strip_prefix("http://"))
        .ok_or_else(|| {
            anyhow::anyhow!("the API address must start with http:// or https:// (got {api})")
        })?;
    anyhow::ensure!(
        !rest.is_empty() && !rest.starts_with('/'),
        "the API address has no host: {api}"
    );
    reqwest::Url::parse(api).map_err(|e| anyhow::anyhow!("the API address {api}: {e}"))?;
    Ok(api.trim_end_matches('/').to_owned())
}

/// Reads the PEM CA certificate the `--ca-cert` flag or `WARREN_CA_CERT` names.
pub fn read_ca_file(path: &std::path::Path) -> anyhow::Result<String> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--ca-cert: cannot read {}: {e}", path.display()))?;
    anyhow::ensure!(
        pem.contains("-----BEGIN CERTIFICATE-----"),
        "--ca-cert: {} holds no PEM certificate",
        path.display()
    );
    Ok(pem)
}

/// The HTTP client: the system's CA certificates (Mozilla's list when the
/// system has none) plus `extra_ca` (PEM), the connect timeout, and the
/// proxy from the environment.
pub fn http_client(extra_ca: Option<&str>) -> anyhow::Result<reqwest::Client> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(pem) = extra_ca {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert =
                cert.map_err(|e| anyhow::anyhow!("the CA certificate is not valid PEM: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| anyhow::anyhow!("the CA certificate cannot be used: {e}"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("warren/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// Words for a failed call to `url`: what went wrong and what to do.
pub fn explain(url: &str, e: &reqwest::Error) -> anyhow::Error {
    use std::error::Error as _;
    let mut causes = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    let detail = causes.last().cloned().unwrap_or_else(|| e.to_string());
    let all = causes.join(": ");
    if all.contains("UnknownIssuer") || all.contains("invalid peer certificate") {
        return anyhow::anyhow!(
            "the API at {url} presented a certificate this client does not trust ({detail}); \
             pass its CA with --ca-cert FILE (an edge that issued its own certificate keeps \
             its CA in <data_dir>/api-ca.pem)"
        );
    }
    if e.is_timeout() {
        return anyhow::anyhow!("the API at {url} did not answer in time ({detail})");
    }
    if all.contains("InvalidContentType") || all.contains("corrupt message") {
        return anyhow::anyhow!(
            "the API at {url} does not speak TLS ({detail}); use an http:// address"
        );
    }
    if let Some(proxy) = proxy_for(url)
        && (e.is_connect() || all.contains("tunnel"))
    {
        return anyhow::anyhow!(
            "cannot reach the API at {url} through the proxy {proxy} ({detail}); check the \
             proxy, or list the API's host in NO_PROXY to go direct"
        );
    }
    if e.is_connect() {
        return anyhow::anyhow!("cannot reach the API at {url}: {detail}");
    }
    if url.starts_with("http://")
        && (all.contains("invalid HTTP") || all.contains("connection closed before message"))
    {
        return anyhow::anyhow!(
            "the API at {url} did not answer HTTP ({detail}); if the edge serves HTTPS \
             ([api] tls), use an https:// address"
        );
    }
    anyhow::anyhow!("the API at {url}: {detail}")
}

/// The proxy the environment names for `url` (as reqwest picks it:
/// `HTTPS_PROXY` / `HTTP_PROXY` by scheme, then `ALL_PROXY`, either case),
/// unless `NO_PROXY` lists its host; for error messages.
fn proxy_for(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let host = parsed
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let var = |name: &str| {
        std::env::var(name)
            .or_else(|_| std::env::var(name.to_ascii_lowercase()))
            .ok()
            .filter(|v| !v.trim().is_empty())
    };
    let exempt = var("NO_PROXY").is_some_and(|list| {
        list.split(',').map(str::trim).any(|n| {
            n == "*"
                || n.trim_start_matches('.') == host
                || host.ends_with(&format!(".{}", n.trim_start_matches('.')))
        })
    });
    if exempt {
        return None;
    }
    let by_scheme = match parsed.scheme() {
        "https" => "HTTPS_PROXY",
        _ => "HTTP_PROXY",
    };
    var(by_scheme).or_else(|| var("ALL_PROXY"))
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
                "no {what}: pass {flag}, set {env}, run `warren login`, or start an edge \
                 (`warren serve`) to write a profile at {}",
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
        let ca_file = flags.ca_cert.clone().or_else(|| {
            std::env::var_os("WARREN_CA_CERT")
                .filter(|v| !v.is_empty())
                .map(Into::into)
        });
        let ca = match ca_file {
            Some(path) => Some(read_ca_file(&path)?),
            None => profile.and_then(|p| p.ca_cert),
        };
        Client::with_ca(&api, &account, &token, ca.as_deref())
    }

    /// A client for `api` (an `http://` or `https://` URL), `account` and
    /// `token`, trusting `ca` (PEM) besides the system's roots.
    pub fn with_ca(
        api: &str,
        account: &str,
        token: &str,
        ca: Option<&str>,
    ) -> anyhow::Result<Client> {
        Ok(Client {
            http: http_client(ca)?,
            base: api_url(api)?,
            account: account.to_owned(),
            token: token.to_owned(),
        })
    }

    /// A client for `api` (an `http://` or `https://` URL), `account` and
    /// `token`, trusting the system's CA certificates.
    pub fn with(api: &str, account: &str, token: &str) -> anyhow::Result<Client> {
        Client::with_ca(api, account, token, None)
    }

    /// The accounts `token` acts for at `api` (`GET /client/v4/accounts`).
    pub async fn accounts(
        api: &str,
        token: &str,
        ca: Option<&str>,
    ) -> anyhow::Result<Vec<AccountInfo>> {
        let c = Client::with_ca(api, "", token, ca)?;
        let url = format!("{}/client/v4/accounts", c.base);
        let resp = c
            .http
            .get(&url)
            .bearer_auth(&c.token)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| explain(&c.base, &e))?;
        read_envelope(resp, "accounts")
            .await?
            .result
            .ok_or_else(|| anyhow::anyhow!("the API answered /accounts without a result"))
    }

    /// Sends `method` to `…/accounts/{account}/{path}` with an optional
    /// `(content type, bytes)` body and returns the response as it starts
    /// (no overall timeout: a tail is read as long as it runs).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Bytes)>,
    ) -> anyhow::Result<reqwest::Response> {
        self.send_within(method, path, body, None).await
    }

    async fn send_within(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Bytes)>,
        timeout: Option<Duration>,
    ) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}/client/v4/accounts/{}/{path}", self.base, self.account);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        if let Some((ctype, bytes)) = body {
            req = req.header("content-type", ctype).body(bytes);
        }
        req.send().await.map_err(|e| explain(&self.base, &e))
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
        let resp = self
            .send_within(method, path, body, Some(REQUEST_TIMEOUT))
            .await?;
        read_envelope(resp, path).await
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

/// Reads an answer's envelope: the result typed as `T` on success, the
/// API's first error (an [`ApiFailure`]) otherwise.
async fn read_envelope<T: DeserializeOwned>(
    resp: reqwest::Response,
    path: &str,
) -> anyhow::Result<Envelope<T>> {
    let status = resp.status().as_u16();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| anyhow::anyhow!("the API's answer to {path} broke off: {e}"))?;
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
