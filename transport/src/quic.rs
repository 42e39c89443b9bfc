//! The UDP sockets under Warren's QUIC endpoints.
//!
//! Linux gives a UDP socket about 208 KiB of receive buffer by default. A QUIC
//! sender with megabytes of window in flight overruns that in bursts (on
//! loopback a 1 GiB transfer lost about 1700 datagrams to full buffers), and
//! every loss shrinks the congestion window. Warren's endpoints ask for
//! [`SOCKET_BUFFER`] each way, as quic-go does; the kernel caps the request at
//! `net.core.rmem_max` / `wmem_max`, and a smaller grant is logged once per
//! socket with the sysctl to raise.
//!
//! Datagram size: quinn sends 1452-byte datagrams at most unless told
//! otherwise, even where the path carries far larger ones (loopback, jumbo-frame
//! LANs), and every datagram costs a trip through the endpoint and connection
//! drivers and its own AEAD call. Warren's endpoints accept datagrams of up to
//! [`MAX_UDP_PAYLOAD`] bytes and let path MTU discovery
//! ([`discover_path_mtu`]) probe up to that size: a path that drops larger
//! datagrams keeps its connections at what it carries (quinn's black-hole
//! detection falls back when one starts dropping them).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

/// The receive and send buffer Warren asks the kernel for on each QUIC socket.
pub const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// Binds a UDP socket for a QUIC endpoint on `addr` and raises its buffers
/// toward [`SOCKET_BUFFER`] (best effort: a smaller grant is not an error).
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    let sock = socket2::SockRef::from(&socket);
    // Linux doubles the request for its bookkeeping and reports the doubled size.
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    let recv = sock.recv_buffer_size().unwrap_or(0);
    if recv < 2 * SOCKET_BUFFER {
        tracing::info!(
            granted = recv,
            wanted = SOCKET_BUFFER,
            "the kernel capped this QUIC socket's receive buffer; raise net.core.rmem_max for fewer drops in bursts"
        );
    }
    Ok(socket)
}

/// The largest UDP payload Warren's QUIC endpoints accept, and the most that
/// path MTU discovery probes for. quinn sends up to 10 datagrams of one size
/// in a single segmented (GSO) send, which must fit the 65 507 bytes one UDP
/// send can carry: 6000 leaves room. (bench/tunnel on loopback: with 8952 every
/// batch failed and connections fell back below 1452.)
pub const MAX_UDP_PAYLOAD: u16 = 6000;

/// Lets path MTU discovery raise `transport`'s datagram size up to
/// [`MAX_UDP_PAYLOAD`] (quinn probes from 1200 bytes after the handshake,
/// and again every 10 minutes).
pub fn discover_path_mtu(transport: &mut quinn::TransportConfig) {
    let mut discovery = quinn::MtuDiscoveryConfig::default();
    discovery.upper_bound(MAX_UDP_PAYLOAD);
    transport.mtu_discovery_config(Some(discovery));
}

/// A quinn endpoint on a socket from [`bind_udp`]: a server when `server` is
/// given, else a client only. It accepts datagrams of up to
/// [`MAX_UDP_PAYLOAD`] bytes (a peer sends larger ones only where path MTU
/// discovery found they get through).
pub fn endpoint(
    addr: SocketAddr,
    mut config: quinn::EndpointConfig,
    server: Option<quinn::ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    quinn::Endpoint::new(
        config,
        server,
        bind_udp(addr)?,
        Arc::new(quinn::TokioRuntime),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_udp_raises_the_receive_buffer_as_far_as_the_kernel_allows() {
        let socket = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let granted = socket2::SockRef::from(&socket).recv_buffer_size().unwrap();
        let max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The kernel grants min(request, rmem_max), doubled.
        assert_eq!(granted, 2 * SOCKET_BUFFER.min(max));
    }
}
