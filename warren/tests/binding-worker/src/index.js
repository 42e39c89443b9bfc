// Test worker for the binding path: each path exercises one behaviour.
export default {
  async fetch(request, env) {
    const path = new URL(request.url).pathname;
    try {
      if (path === "/hello") {
        const r = await env.API.fetch("http://inventory.internal/hello");
        const text = await r.text();
        console.log(`binding answered ${r.status}: ${text}`);
        return new Response(`${env.GREETING}: ${text}`);
      }
      if (path.startsWith("/bytes/")) {
        return await env.API.fetch("http://inventory.internal" + path);
      }
      if (path === "/upload") {
        return await env.API.fetch("http://inventory.internal/count", {
          method: "POST",
          body: request.body,
          duplex: "half",
        });
      }
      if (path === "/echo") {
        return await env.API.fetch("http://inventory.internal/echo", {
          method: "POST",
          body: request.body,
          duplex: "half",
        });
      }
      if (path === "/nodns") {
        await env.NODNS.fetch("http://nowhere.internal/hello");
        return new Response("unexpected success");
      }
      if (path === "/refused") {
        await env.DOWN.fetch("http://inventory.internal/hello");
        return new Response("unexpected success");
      }
      return new Response("no such test\n", { status: 404 });
    } catch (err) {
      return new Response(err.message, { status: 502 });
    }
  },
};
