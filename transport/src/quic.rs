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
//! drivers and its own AEAD call. Warren's endpoints tell their peers they take
//! datagrams of up to [`MAX_UDP_PAYLOAD`] bytes (QUIC's `max_udp_payload_size`:
//! a peer sends nothing larger) and let path MTU discovery
//! ([`transport_config`]) probe up to that size. A path that drops larger
//! datagrams keeps its connections at what it carries; one that starts dropping
//! them is caught by quinn's black-hole detection, which falls back to 1200
//! bytes and searches again a minute later.
//!
//! The cost: quinn's receive buffer per endpoint is that size × 64 (GRO
//! segments) × 32 (datagrams per receive call), 11.7 MiB of address space
//! instead of 2.9 MiB; the kernel fills at most 64 KiB of each of the 32
//! slots.

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

/// The largest UDP payload Warren's QUIC endpoints take from peers, and the
/// most that path MTU discovery probes for. quinn sends up to 10 datagrams of
/// one size in a single segmented (GSO) send (its private
/// `MAX_TRANSMIT_SEGMENTS`), which must fit the 65 507 bytes one UDP send over
/// IPv4 carries (65 527 over IPv6): 6000 leaves room. With 8952, bench/tunnel on
/// loopback saw every such send fail and connections fall back below 1452.
pub const MAX_UDP_PAYLOAD: u16 = 6000;

// Ten datagrams of the largest size fit one UDP send (see `MAX_UDP_PAYLOAD`).
const _: () = assert!(10 * MAX_UDP_PAYLOAD as usize <= 65_507);

/// quinn's transport defaults with path MTU discovery up to
/// [`MAX_UDP_PAYLOAD`]: the base of every Warren QUIC connection's transport
/// (edge, connector, node link). quinn probes from 1200 bytes after the
/// handshake (and again every 10 minutes), halving the gap each time; it stops
/// only when a step would be under 1 byte, so a 1500-byte Ethernet path ends at
/// exactly what it carries (1452 over IPv6, 1472 over IPv4) rather than up to
/// 20 bytes short, as quinn's default stopping rule would leave it over a gap
/// this wide.
pub fn transport_config() -> quinn::TransportConfig {
    let mut discovery = quinn::MtuDiscoveryConfig::default();
    discovery.upper_bound(MAX_UDP_PAYLOAD).minimum_change(1);
    let mut transport = quinn::TransportConfig::default();
    transport.mtu_discovery_config(Some(discovery));
    transport
}

/// A quinn endpoint on a socket from [`bind_udp`]: a server when `server` is
/// given, else a client only. Its peers may send datagrams of up to
/// [`MAX_UDP_PAYLOAD`] bytes (they do only where path MTU discovery found
/// that size gets through).
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
