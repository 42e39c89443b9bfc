// Test worker for the three-process run: /hello and /refused as in the binding
// test, and /tls/<BINDING> calling an https origin through that binding (each
// binding's service has its own cert_verification_mode).
export default {
  async fetch(request, env) {
    const path = new URL(request.url).pathname;
    try {
      if (path === "/hello") {
        const r = await env.API.fetch("http://inventory.internal/hello");
        return new Response(`${r.status}: ${await r.text()}`);
      }
      if (path === "/refused") {
        await env.DOWN.fetch("http://inventory.internal/hello");
        return new Response("unexpected success");
      }
      if (path.startsWith("/tls/")) {
        const binding = env[path.slice("/tls/".length)];
        if (!binding) {
          return new Response("no such binding", { status: 404 });
        }
        const r = await binding.fetch("https://inventory.internal/hello");
        return new Response(`${r.status}: ${await r.text()}`);
      }
      return new Response("no such test\n", { status: 404 });
    } catch (err) {
      return new Response(err.message, { status: 502 });
    }
  },
};
