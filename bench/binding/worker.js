// The worker of bench/binding: forwards the request's path to the private
// inventory service through its `API` binding and streams the answer back.
// Served unchanged by Warren (VPC binding through the tunnel) and by workerd
// (a plain service binding to the same origin, no tunnel).
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const upstream = await env.API.fetch(`http://inventory.internal${url.pathname}${url.search}`);
    return new Response(upstream.body, upstream);
  },
};
