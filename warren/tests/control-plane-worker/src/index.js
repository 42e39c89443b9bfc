// The control-plane tests' worker: its version, and (when bound) what the
// private service answers through the API binding.
export default {
  async fetch(request, env) {
    if (!env.API) {
      return new Response(`version ${env.VERSION}`);
    }
    try {
      const r = await env.API.fetch("http://inventory.internal/hello");
      return new Response(`${env.VERSION}: ${await r.text()}`, { status: r.status });
    } catch (e) {
      return new Response(String(e.message), { status: 502 });
    }
  },
};
