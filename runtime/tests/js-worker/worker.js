// A Workers-style worker used by the runtime's tests; it runs unchanged on workerd.
import { greet } from "./lib/greet.js";

export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    switch (url.pathname) {
      case "/hello":
        return new Response(greet(env.GREETING));
      case "/echo": {
        const body = await request.text();
        return new Response(`${request.method} ${request.headers.get("x-test")} ${body}`);
      }
      case "/count":
        // A fresh instance per request: a global set here never survives.
        globalThis.hits = (globalThis.hits ?? 0) + 1;
        return new Response(String(globalThis.hits));
      case "/stream":
        // The request body streams straight back (no buffering in JS).
        return new Response(request.body, {
          headers: { "x-method": request.method, "x-test": request.headers.get("x-test") ?? "" },
        });
      case "/bind": {
        const r = await env.API.fetch("http://inventory.internal/items", { headers: { "x-from-js": "1" } });
        return new Response(`binding said: ${await r.text()}`, { status: r.status });
      }
      case "/bindfail":
        try {
          await env.API.fetch("http://inventory.internal/fail");
          return new Response("no error?", { status: 500 });
        } catch (e) {
          return new Response(`caught: ${e.message}`, { status: 502 });
        }
      case "/later":
        ctx.waitUntil((async () => {
          await new Promise((resolve) => setTimeout(resolve, 500));
          await env.API.fetch("http://inventory.internal/later");
        })());
        return new Response("sent");
      case "/proxy":
        // The everyday proxy pattern: the client's request, headers and all,
        // sent on to another URL with the worker's plain fetch.
        try {
          const r = await fetch("http://127.0.0.1:9/items", request);
          return new Response(`proxied: ${await r.text()}`, { status: r.status });
        } catch (e) {
          return new Response(`proxy failed: ${e.message}`, { status: 502 });
        }
      case "/headers":
        return new Response(JSON.stringify([...request.headers.keys()].sort()));
      case "/throw":
        throw new Error("boom from JS");
      default:
        return new Response("not found", { status: 404 });
    }
  },
};
