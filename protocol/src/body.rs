//! HTTP-body helpers for the binding RPC (feature `body`): a body that starts
//! with a framed head, and reading that head back off a streamed body without
//! buffering more than the head.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::frame::{DecodeError, split_frame};
use crate::messages::WireMessage;

/// A body that yields `first` and then everything of `inner`.
#[derive(Debug)]
pub struct Prefixed<B> {
    first: Option<Bytes>,
    inner: B,
}

impl<B> Prefixed<B> {
    /// `first` (skipped when empty), then `inner`.
    pub fn new(first: Bytes, inner: B) -> Self {
        Prefixed {
            first: (!first.is_empty()).then_some(first),
            inner,
        }
    }
}

impl<B> Body for Prefixed<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let extra = self.first.as_ref().map_or(0, |b| b.len() as u64);
        let mut hint = SizeHint::new();
        // Upper first: SizeHint asserts lower <= upper at every step.
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(extra));
        }
        hint.set_lower(inner.lower().saturating_add(extra));
        hint
    }
}

/// Why a head could not be read off a body.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The body ended before the head was complete.
    #[error("the body ended inside the head")]
    Truncated,
    /// The head did not decode.
    #[error("bad head: {0}")]
    Decode(#[from] DecodeError),
    /// Reading the body failed.
    #[error("reading the body failed: {0}")]
    Body(String),
}

/// Reads one framed `M` off the front of `body`; returns it and the rest of the
/// body (bytes already read past the head come first).
pub async fn read_head<M, B>(mut body: B) -> Result<(M, Prefixed<B>), HeadError>
where
    M: WireMessage,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut buf = BytesMut::new();
    loop {
        if let Some((head, used)) = split_frame(&buf, M::LIMIT)? {
            let head = M::from_bytes(head)?;
            buf.advance(used);
            return Ok((head, Prefixed::new(buf.freeze(), body)));
        }
        match body.frame().await {
            None => return Err(HeadError::Truncated),
            Some(Err(e)) => return Err(HeadError::Body(e.to_string())),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::{CallHead, MAX_HEAD};
    use http_body_util::{BodyExt, Full, StreamBody};

    fn chunked(
        parts: Vec<Vec<u8>>,
    ) -> impl Body<Data = Bytes, Error = std::convert::Infallible> + Unpin {
        StreamBody::new(futures_lite_iter(parts))
    }

    fn futures_lite_iter(
        parts: Vec<Vec<u8>>,
    ) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, std::convert::Infallible>> + Unpin
    {
        struct It(std::vec::IntoIter<Vec<u8>>);
        impl futures_core::Stream for It {
            type Item = Result<Frame<Bytes>, std::convert::Infallible>;
            fn poll_next(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Self::Item>> {
                Poll::Ready(self.0.next().map(|p| Ok(Frame::data(Bytes::from(p)))))
            }
        }
        It(parts.into_iter())
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[test]
    fn head_split_across_chunks_then_body_streams_on() {
        let head = CallHead {
            url: "http://x/".into(),
            ..Default::default()
        };
        let mut bytes = head.to_frame();
        bytes.extend_from_slice(b"hello world");
        // Cut into 3-byte pieces: the head spans many chunks and shares one with the body.
        let parts: Vec<Vec<u8>> = bytes.chunks(3).map(|c| c.to_vec()).collect();
        let (got, rest) = block_on(read_head::<CallHead, _>(chunked(parts))).unwrap();
        assert_eq!(got, head);
        let rest = block_on(rest.collect()).unwrap().to_bytes();
        assert_eq!(&rest[..], b"hello world");
    }

    #[test]
    fn size_hint_adds_the_prefix_to_an_exact_body() {
        let b = Prefixed::new(
            Bytes::from_static(b"abc"),
            Full::new(Bytes::from_static(b"hello")),
        );
        assert_eq!(b.size_hint().exact(), Some(8));
    }

    #[test]
    fn truncated_and_oversized_heads_are_errors() {
        let head = CallHead::default().to_frame();
        let cut = Full::new(Bytes::copy_from_slice(&head[..head.len() - 1]));
        assert!(matches!(
            block_on(read_head::<CallHead, _>(cut)),
            Err(HeadError::Truncated)
        ));
        let huge = ((MAX_HEAD + 1) as u32).to_be_bytes().to_vec();
        assert!(matches!(
            block_on(read_head::<CallHead, _>(Full::new(Bytes::from(huge)))),
            Err(HeadError::Decode(DecodeError::TooLarge { .. }))
        ));
    }
}
