//! A hostile DNS server of the test's own: every `A` question for any name is
//! answered with TTL 0, alternating between a public address and a private
//! one (127.0.0.1 by default) — the classic DNS-rebinding attack on a "check,
//! then connect" outbound gate. `AAAA` questions get no answer.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType, rdata::A};

/// A running rebinding server (its thread ends with the process).
pub struct RebindDns {
    addr: SocketAddr,
    a_queries: Arc<AtomicUsize>,
}

impl RebindDns {
    /// Serves on `socket` (bound by the caller, e.g. inside a namespace):
    /// odd `A` answers are `public`, even ones `private`.
    pub fn serve(socket: UdpSocket, public: Ipv4Addr, private: Ipv4Addr) -> anyhow::Result<Self> {
        let addr = socket.local_addr()?;
        let a_queries = Arc::new(AtomicUsize::new(0));
        let count = a_queries.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut answer = Message::new();
                answer
                    .set_id(query.id())
                    .set_message_type(MessageType::Response)
                    .set_recursion_desired(query.recursion_desired())
                    .set_recursion_available(true)
                    .set_response_code(ResponseCode::NoError);
                for q in query.queries() {
                    answer.add_query(q.clone());
                    if q.query_type() == RecordType::A {
                        let i = count.fetch_add(1, Ordering::SeqCst);
                        let ip = if i.is_multiple_of(2) { public } else { private };
                        answer.add_answer(Record::from_rdata(q.name().clone(), 0, RData::A(A(ip))));
                    }
                }
                if let Ok(bytes) = answer.to_vec() {
                    let _ = socket.send_to(&bytes, from);
                }
            }
        });
        Ok(RebindDns { addr, a_queries })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `A` questions answered so far.
    pub fn a_queries(&self) -> usize {
        self.a_queries.load(Ordering::SeqCst)
    }
}
