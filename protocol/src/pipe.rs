//! In-process connections between parts that share one process: each
//! connection is an in-memory duplex pipe, so the boundary (the binding RPC,
//! the CONNECT front door) keeps its protocol without kernel sockets.

use tokio::io::DuplexStream;
use tokio::sync::{Mutex, mpsc};

/// Buffer of each direction of a pipe.
pub const PIPE_BYTES: usize = 256 << 10;

/// The caller's side: opens connections to the matching [`PipeListener`].
#[derive(Debug, Clone)]
pub struct PipeDialer(mpsc::Sender<DuplexStream>);

/// The server's side: accepts the connections its [`PipeDialer`]s open.
#[derive(Debug)]
pub struct PipeListener(Mutex<mpsc::Receiver<DuplexStream>>);

/// A dialer and the listener it reaches.
pub fn pipe_pair() -> (PipeDialer, PipeListener) {
    let (tx, rx) = mpsc::channel(16);
    (PipeDialer(tx), PipeListener(Mutex::new(rx)))
}

impl PipeDialer {
    /// Opens a connection; fails once the listener is gone.
    pub async fn dial(&self) -> std::io::Result<DuplexStream> {
        let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
        self.0.send(theirs).await.map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "the in-process listener has stopped",
            )
        })?;
        Ok(ours)
    }
}

impl PipeListener {
    /// The next connection; fails once every dialer is gone.
    pub async fn accept(&self) -> std::io::Result<DuplexStream> {
        self.0
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "no dialer is left"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_dialed_pipe_carries_bytes_both_ways_and_ends_with_its_peers() {
        let (dialer, listener) = pipe_pair();
        let mut client = dialer.dial().await.unwrap();
        let mut server = listener.accept().await.unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        server.write_all(b"pong").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        drop(dialer);
        assert_eq!(
            listener.accept().await.unwrap_err().kind(),
            std::io::ErrorKind::BrokenPipe
        );
        let (dialer, listener) = pipe_pair();
        drop(listener);
        assert_eq!(
            dialer.dial().await.unwrap_err().kind(),
            std::io::ErrorKind::ConnectionRefused
        );
    }
}
