@0x99093d3b2ac383ed;
# Wire messages of the Warren tunnel between iris (the edge) and warren-connector.
# Every message travels as one length-prefixed frame (see protocol/src/frame.rs).

enum ErrorCode {
  # The shared ProxyError taxonomy (protocol/src/error.rs, docs/api.md). `none` means success.
  none @0;
  dnsError @1;
  connectionRefused @2;
  connectionTimeout @3;
  connectionTerminated @4;
  connectionLimitReached @5;
  destinationUnavailable @6;
  destinationForbidden @7;
  tlsError @8;
  serviceNotFound @9;
  bindingNotFound @10;
}

struct SocketAddress {
  # An IP address (4 or 16 bytes) and a port.
  ip @0 :Data;
  port @1 :UInt16;
}

# ---- control stream (first bidirectional stream, opened by the connector) ----

struct RegisterRequest {
  accountId @0 :Text;
  tunnelId @1 :Text;
  secret @2 :Data;
  connIndex @3 :UInt8;
  connectorId @4 :Text;
  version @5 :Text;
  features @6 :List(Text);
  haConnections @7 :UInt8;
  # How many connections the connector intends to keep (for tunnel status).
}

enum RefusalReason {
  badCredentials @0;
  unsupportedVersion @1;
  overloaded @2;
  malformed @3;
}

struct RegisterResponse {
  union {
    ok :group {
      connectionId @0 :Text;
      edgeName @1 :Text;
    }
    refused :group {
      reason @2 :RefusalReason;
      message @3 :Text;
      retryAfterMs @4 :UInt32;
    }
  }
}

struct ControlMessage {
  # Sent on the control stream after registration, either way.
  union {
    unregister @0 :Void;
    # Connector -> edge: stop sending new streams on this connection.
    unregisterAck @1 :Void;
    # Edge -> connector: done; no new streams will arrive.
  }
}

# ---- data streams (opened by the edge, one per origin TCP connection) ----

struct ConnectRequest {
  destination @0 :SocketAddress;
  flowId @1 :Text;
  timeoutMs @2 :UInt32;
}

struct ConnectResponse {
  error @0 :ErrorCode;
  message @1 :Text;
}

# ---- DNS (QUIC datagrams; an answer too large for a datagram comes on a uni stream) ----

struct DnsQuery {
  id @0 :UInt32;
  resolver @1 :SocketAddress;
  # Resolver to ask; an empty ip means the connector's own default.
  message @2 :Data;
  # A raw DNS query message.
}

struct DnsAnswer {
  id @0 :UInt32;
  error @1 :ErrorCode;
  message @2 :Data;
  # A raw DNS response message (empty when error is not `none`).
}

# ---- node-to-node link (bidirectional streams between edge nodes, after a preamble) ----

struct PeerRequest {
  # The first message of a stream one edge node opens to another.
  union {
    connect :group {
      # Open a data stream on one of this node's own connections of the tunnel;
      # the answer is a PeerResponse, then raw bytes both ways.
      tunnelId @0 :Text;
      request @1 :ConnectRequest;
    }
    dns :group {
      # Resolve through one of this node's own connections of the tunnel; the
      # answer is a PeerResponse carrying the raw DNS response in `data`.
      tunnelId @2 :Text;
      resolver @3 :SocketAddress;
      message @4 :Data;
    }
    bundle @5 :Text;
    # A worker bundle by SHA-256 (hex): a PeerResponse, then its bytes until FIN.
    compiled @6 :Text;
    # A compiled component by cache key: a PeerResponse, then its bytes until FIN.
  }
}

struct PeerResponse {
  error @0 :ErrorCode;
  # `none`: done (for content: found, bytes follow).
  message @1 :Text;
  data @2 :Data;
  # The raw DNS response of a `dns` request.
}
