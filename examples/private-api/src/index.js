// A Workers-style worker: it calls a private inventory service through the
// INVENTORY VPC binding and shapes the answer. The same file runs on workerd.
import { summarize } from "./summary.js";

export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    try {
      const upstream = await env.INVENTORY.fetch("http://inventory.internal/items" + url.search);
      if (!upstream.ok) {
        return new Response(`inventory answered ${upstream.status}\n`, { status: 502 });
      }
      const items = await upstream.json();
      console.log(`fetched ${items.length} items`);
      return Response.json({ title: env.GREETING, ...summarize(items) });
    } catch (err) {
      // Binding failures arrive as Error("ProxyError: <code>").
      console.error(String(err));
      return new Response(`${err.message}\n`, { status: 502 });
    }
  },
};
