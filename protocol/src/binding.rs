//! The binding RPC's messages: what the runtime sends the binding-worker for one
//! binding call ([`CallHead`]) and what comes back ([`ReplyHead`]).
//!
//! A call is one HTTP/2 stream. Its request body is a framed `CallHead` followed
//! by the worker's request body; its response body is a framed `ReplyHead`
//! followed by the origin's response body. Bodies stream with HTTP/2 flow
//! control; calls share a few long-lived connections.

use crate::binding_capnp as wire;
use crate::error::ErrorCode;
use crate::frame::{DecodeError, read_capnp, write_capnp};
use crate::messages::{WireMessage, check_body, code_from_wire, code_to_wire, text};

/// Size limit of a call or reply head (URL and headers included).
pub const MAX_HEAD: usize = 96 * 1024;
/// Most headers a head may carry.
pub const MAX_HEADERS: usize = 256;
/// Longest URL accepted.
pub const MAX_URL: usize = 16 * 1024;
/// Longest header value accepted.
pub const MAX_HEADER_VALUE: usize = 16 * 1024;
/// Path of the binding RPC on its HTTP/2 connection.
pub const RPC_PATH: &str = "/warren.binding/v1/call";
/// Header a guest sets on a binding request to get a redirect back instead of
/// having it followed (`redirect: "manual"`); stripped before the origin.
pub const REDIRECT_HEADER: &str = "warren-redirect";

/// Who is calling a binding, sent with every binding call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BindingContext {
    /// Account of the worker.
    pub account_id: String,
    /// Worker name.
    pub worker: String,
    /// Binding name as the worker calls it.
    pub binding: String,
    /// The VPC service the binding names.
    pub service_id: String,
    /// Id of the incoming request that caused the call.
    pub request_id: String,
}

/// One header; values are bytes (HTTP allows non-UTF-8 values).
pub type Header = (String, Vec<u8>);

/// Runtime → binding-worker: the binding call's context and request head.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallHead {
    /// Who calls.
    pub context: BindingContext,
    /// HTTP method.
    pub method: String,
    /// Absolute URL (its host sets `Host` and SNI; it does not route).
    pub url: String,
    /// Request headers (the binding marker already removed).
    pub headers: Vec<Header>,
    /// `redirect: "manual"`: return 3xx answers instead of following them.
    pub redirect_manual: bool,
}

/// Binding-worker → runtime: the origin's response head, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyHead {
    /// The origin answered; its body follows.
    Response {
        /// HTTP status.
        status: u16,
        /// Response headers.
        headers: Vec<Header>,
    },
    /// The call failed with a ProxyError code.
    Error {
        /// The code the worker sees.
        code: ErrorCode,
        /// Detail for logs.
        message: String,
    },
}

fn set_headers(mut list: capnp::struct_list::Builder<'_, wire::header::Owned>, h: &[Header]) {
    for (i, (name, value)) in h.iter().enumerate() {
        let mut b = list.reborrow().get(i as u32);
        b.set_name(name.as_str());
        b.set_value(value);
    }
}

fn get_headers(
    r: capnp::Result<capnp::struct_list::Reader<'_, wire::header::Owned>>,
) -> Result<Vec<Header>, DecodeError> {
    let r = r?;
    if r.len() as usize > MAX_HEADERS {
        return Err(DecodeError::InvalidField {
            field: "headers",
            reason: "too many headers",
        });
    }
    let mut out = Vec::with_capacity(r.len() as usize);
    for h in r.iter() {
        let value = h.get_value()?;
        if value.len() > MAX_HEADER_VALUE {
            return Err(DecodeError::InvalidField {
                field: "headers",
                reason: "header value too long",
            });
        }
        out.push((text(h.get_name(), "headers.name")?, value.to_vec()));
    }
    Ok(out)
}

impl WireMessage for CallHead {
    const LIMIT: usize = MAX_HEAD;

    fn to_bytes(&self) -> Vec<u8> {
        let mut msg = capnp::message::Builder::new_default();
        let mut b = msg.init_root::<wire::call_head::Builder<'_>>();
        {
            let c = &self.context;
            let mut cb = b.reborrow().init_context();
            cb.set_account_id(c.account_id.as_str());
            cb.set_worker(c.worker.as_str());
            cb.set_binding(c.binding.as_str());
            cb.set_service_id(c.service_id.as_str());
            cb.set_request_id(c.request_id.as_str());
        }
        b.set_method(self.method.as_str());
        b.set_url(self.url.as_str());
        set_headers(
            b.reborrow().init_headers(self.headers.len() as u32),
            &self.headers,
        );
        b.set_redirect_manual(self.redirect_manual);
        write_capnp(&msg)
    }

    fn from_bytes(body: &[u8]) -> Result<Self, DecodeError> {
        check_body::<Self>(body)?;
        let msg = read_capnp(body)?;
        let r = msg.get_root::<wire::call_head::Reader<'_>>()?;
        let c = r.get_context()?;
        let url = r.get_url()?.to_str()?;
        if url.len() > MAX_URL {
            return Err(DecodeError::InvalidField {
                field: "url",
                reason: "too long",
            });
        }
        Ok(CallHead {
            context: BindingContext {
                account_id: text(c.get_account_id(), "context.accountId")?,
                worker: text(c.get_worker(), "context.worker")?,
                binding: text(c.get_binding(), "context.binding")?,
                service_id: text(c.get_service_id(), "context.serviceId")?,
                request_id: text(c.get_request_id(), "context.requestId")?,
            },
            method: text(r.get_method(), "method")?,
            url: url.to_owned(),
            headers: get_headers(r.get_headers())?,
            redirect_manual: r.get_redirect_manual(),
        })
    }
}

impl WireMessage for ReplyHead {
    const LIMIT: usize = MAX_HEAD;

    fn to_bytes(&self) -> Vec<u8> {
        let mut msg = capnp::message::Builder::new_default();
        let b = msg.init_root::<wire::reply_head::Builder<'_>>();
        match self {
            ReplyHead::Response { status, headers } => {
                let mut g = b.init_response();
                g.set_status(*status);
                set_headers(g.init_headers(headers.len() as u32), headers);
            }
            ReplyHead::Error { code, message } => {
                let mut g = b.init_error();
                g.set_code(code_to_wire(Some(*code)));
                g.set_message(message.as_str());
            }
        }
        write_capnp(&msg)
    }

    fn from_bytes(body: &[u8]) -> Result<Self, DecodeError> {
        check_body::<Self>(body)?;
        let msg = read_capnp(body)?;
        let r = msg.get_root::<wire::reply_head::Reader<'_>>()?;
        Ok(match r.which()? {
            wire::reply_head::Which::Response(g) => ReplyHead::Response {
                status: g.get_status(),
                headers: get_headers(g.get_headers())?,
            },
            wire::reply_head::Which::Error(g) => ReplyHead::Error {
                code: code_from_wire(g.get_code()?).ok_or(DecodeError::InvalidField {
                    field: "error.code",
                    reason: "an error reply needs a code",
                })?,
                message: text(g.get_message(), "error.message")?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::split_frame;

    fn call() -> CallHead {
        CallHead {
            context: BindingContext {
                account_id: "acc".into(),
                worker: "w".into(),
                binding: "API".into(),
                service_id: "svc".into(),
                request_id: "rid".into(),
            },
            method: "POST".into(),
            url: "http://inventory.internal/items?x=1".into(),
            headers: vec![
                ("content-type".into(), b"text/plain".to_vec()),
                ("x-bin".into(), vec![0xff, 0x01]),
            ],
            redirect_manual: true,
        }
    }

    #[test]
    fn call_head_round_trips() {
        let c = call();
        let frame = c.to_frame();
        let (body, used) = split_frame(&frame, MAX_HEAD).unwrap().unwrap();
        assert_eq!(used, frame.len());
        assert_eq!(CallHead::from_bytes(body).unwrap(), c);
    }

    #[test]
    fn reply_heads_round_trip() {
        for r in [
            ReplyHead::Response {
                status: 404,
                headers: vec![("a".into(), b"b".to_vec())],
            },
            ReplyHead::Error {
                code: ErrorCode::DnsError,
                message: "NXDOMAIN".into(),
            },
        ] {
            assert_eq!(ReplyHead::from_bytes(&r.to_bytes()).unwrap(), r);
        }
    }

    #[test]
    fn too_many_headers_are_refused() {
        let mut c = call();
        c.headers = (0..=MAX_HEADERS)
            .map(|i| (format!("h{i}"), vec![]))
            .collect();
        let err = CallHead::from_bytes(&c.to_bytes()).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::InvalidField {
                    field: "headers",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn an_error_reply_without_a_code_is_refused() {
        let r = ReplyHead::Error {
            code: ErrorCode::DnsError,
            message: String::new(),
        };
        let mut bytes = r.to_bytes();
        // Rewrite the code to `none` by re-encoding through the raw builder.
        let mut msg = capnp::message::Builder::new_default();
        msg.init_root::<wire::reply_head::Builder<'_>>()
            .init_error()
            .set_code(crate::tunnel_capnp::ErrorCode::None);
        bytes.clear();
        bytes.extend(write_capnp(&msg));
        assert!(ReplyHead::from_bytes(&bytes).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for junk in [&b""[..], b"\x00\x00\x00\x00", &[0xffu8; 64][..]] {
            assert!(CallHead::from_bytes(junk).is_err());
            assert!(ReplyHead::from_bytes(junk).is_err());
        }
    }
}
