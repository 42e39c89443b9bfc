// The worker of bench/binding: forwards the request's path to the private
// inventory service through its `API` binding and streams the answer back.
// Served unchanged by Warren (VPC binding through the tunnel) and by workerd
// (a plain service binding to the same origin, no tunnel).
// `/pass/...` returns the binding's Response as it is (the usual Workers proxy);
// other paths re-wrap its body in a new Response (a JS stream on Warren).
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const pass = url.pathname.startsWith("/pass/");
    const path = pass ? url.pathname.slice("/pass".length) : url.pathname;
    const upstream = await env.API.fetch(`http://inventory.internal${path}${url.search}`);
    return pass ? upstream : new Response(upstream.body, upstream);
  },
};
