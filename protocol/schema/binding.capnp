@0xc4f1e2a7b3d59e01;
# The binding RPC between the runtime and the binding-worker. Each call is one
# HTTP/2 stream: the request body starts with a framed CallHead, then the
# worker's request body; the response body starts with a framed ReplyHead, then
# the origin's response body. HTTP/2 multiplexes calls on a few long-lived
# connections and gives every body flow control.

using Tunnel = import "tunnel.capnp";

struct Header {
  name @0 :Text;
  value @1 :Data;
}

struct BindingContext {
  accountId @0 :Text;
  worker @1 :Text;
  binding @2 :Text;
  serviceId @3 :Text;
  requestId @4 :Text;
}

struct CallHead {
  context @0 :BindingContext;
  method @1 :Text;
  url @2 :Text;
  headers @3 :List(Header);
  redirectManual @4 :Bool;
}

struct ReplyHead {
  union {
    response :group {
      status @0 :UInt16;
      headers @1 :List(Header);
    }
    error :group {
      code @2 :Tunnel.ErrorCode;
      message @3 :Text;
    }
  }
}
