//! The error taxonomy shared by every part of the request path (docs/api.md).

use std::fmt;
use std::str::FromStr;

/// Why a proxied request failed; the string names are stable and reach users
/// (`ProxyError: <code>` in JS, `warren-proxy-error` headers, metrics labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The name did not resolve (NXDOMAIN, no address, or the resolver failed).
    DnsError,
    /// The origin actively refused the TCP connection.
    ConnectionRefused,
    /// The origin did not answer within the connect timeout.
    ConnectionTimeout,
    /// An established connection broke before the exchange finished.
    ConnectionTerminated,
    /// Too many concurrent connections for this tunnel, connector or origin.
    ConnectionLimitReached,
    /// No live tunnel connection can carry the request.
    DestinationUnavailable,
    /// The connector's local policy refused the destination.
    DestinationForbidden,
    /// TLS to the origin failed (handshake, certificate verification).
    TlsError,
    /// The VPC service does not exist (or not in this account).
    ServiceNotFound,
    /// The worker has no binding of that name.
    BindingNotFound,
}

impl ErrorCode {
    /// Every code, in a fixed order.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::DnsError,
        ErrorCode::ConnectionRefused,
        ErrorCode::ConnectionTimeout,
        ErrorCode::ConnectionTerminated,
        ErrorCode::ConnectionLimitReached,
        ErrorCode::DestinationUnavailable,
        ErrorCode::DestinationForbidden,
        ErrorCode::TlsError,
        ErrorCode::ServiceNotFound,
        ErrorCode::BindingNotFound,
    ];

    /// The stable snake_case name users see.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::DnsError => "dns_error",
            ErrorCode::ConnectionRefused => "connection_refused",
            ErrorCode::ConnectionTimeout => "connection_timeout",
            ErrorCode::ConnectionTerminated => "connection_terminated",
            ErrorCode::ConnectionLimitReached => "connection_limit_reached",
            ErrorCode::DestinationUnavailable => "destination_unavailable",
            ErrorCode::DestinationForbidden => "destination_forbidden",
            ErrorCode::TlsError => "tls_error",
            ErrorCode::ServiceNotFound => "service_not_found",
            ErrorCode::BindingNotFound => "binding_not_found",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`ErrorCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown proxy error code {0:?}")]
pub struct UnknownErrorCode(pub String);

impl FromStr for ErrorCode {
    type Err = UnknownErrorCode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownErrorCode(s.to_owned()))
    }
}

/// A failure on the request path: a code callers act on, plus detail for logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ProxyError: {code} ({detail})")]
pub struct ProxyError {
    /// What went wrong, in the shared taxonomy.
    pub code: ErrorCode,
    /// Human-readable detail for logs; never shown in place of the code.
    pub detail: String,
}

impl ProxyError {
    /// A new error with a code and detail.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        ProxyError {
            code,
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate name {code}");
            assert_eq!(code.as_str().parse::<ErrorCode>(), Ok(code));
        }
        assert_eq!(
            "no_such_code".parse::<ErrorCode>(),
            Err(UnknownErrorCode("no_such_code".into()))
        );
    }

    #[test]
    fn display_matches_the_workers_shape() {
        let e = ProxyError::new(ErrorCode::DnsError, "NXDOMAIN for x.internal");
        assert!(e.to_string().starts_with("ProxyError: dns_error"));
    }
}
