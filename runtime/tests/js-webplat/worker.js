// Web-platform answers ordinary Workers code relies on; each route answers as
// workerd does (this worker runs unchanged on workerd, and its answers there
// are the ones the runtime's tests expect).

/** Runs each check, one line per check: its name, then its answer or error. */
async function report(checks) {
  const lines = [];
  for (const [name, check] of Object.entries(checks)) {
    try {
      lines.push(`${name}: ${JSON.stringify(await check())}`);
    } catch (e) {
      lines.push(`${name}: ${e.name}: ${e.message}`);
    }
  }
  return new Response(lines.join("\n") + "\n");
}

const bodies = {
  "response clone": async () => {
    const r = new Response("abc", { status: 201, statusText: "Made", headers: { "x-a": "1" } });
    const c = r.clone();
    return [await r.text(), await c.text(), c.status, c.statusText, c.headers.get("x-a"), c instanceof Response];
  },
  "clone of a stream body": async () => {
    const r = new Response(new Blob(["xyz"]).stream());
    const c = r.clone();
    return [await c.text(), await r.text()];
  },
  "bodyUsed around a clone": async () => {
    const r = new Response("a");
    const c = r.clone();
    const seen = [r.bodyUsed, c.bodyUsed];
    await c.text();
    seen.push(r.bodyUsed, c.bodyUsed);
    await r.arrayBuffer();
    seen.push(r.bodyUsed);
    return seen;
  },
  "clone of clones": async () => {
    const r = new Response("k");
    const c1 = r.clone();
    const c2 = r.clone();
    const c3 = c1.clone();
    return [await r.text(), await c1.text(), await c2.text(), await c3.text()];
  },
  "clone without body": async () => {
    const c = new Response(null, { status: 204 }).clone();
    return [c.status, c.body];
  },
  "clone json and formData": async () => {
    const j = Response.json({ x: 1 });
    const jc = j.clone();
    const f = new Response("a=1", { headers: { "content-type": "application/x-www-form-urlencoded" } });
    const fc = f.clone();
    return [await j.json(), await jc.json(), (await f.formData()).get("a"), (await fc.formData()).get("a")];
  },
  "clone after use": async () => {
    const r = new Response("a");
    await r.text();
    return r.clone();
  },
  "request clone after use": async () => {
    const r = new Request("http://a/", { method: "POST", body: "a" });
    await r.text();
    return r.clone();
  },
  "read twice": async () => {
    const r = new Response("a");
    await r.text();
    return await r.text();
  },
  "new Request from a cloned request": async () => {
    const r = new Request("http://a/", { method: "POST", body: "q" });
    const c = r.clone();
    return [await new Request(r).text(), await c.text()];
  },
  "new Response from a cloned body": async () => {
    const r = new Response("p");
    const c = r.clone();
    return [await new Response(r.body).text(), await c.text()];
  },
};

const platform = {
  navigator: () => [navigator.userAgent, navigator.hardwareConcurrency, navigator.language, String(navigator)],
  "multipart file": async () => {
    const form = new FormData();
    form.append("x", "1");
    form.append("f", new Blob([new Uint8Array([0, 255, 13, 10])]), "f.bin");
    const parsed = await new Request("http://a/", { method: "POST", body: form }).formData();
    const file = parsed.get("f");
    return [parsed.get("x"), file.name, [...new Uint8Array(await file.arrayBuffer())]];
  },
  "multipart without boundary": async () =>
    await new Response("--X--", { headers: { "content-type": "multipart/form-data" } }).formData(),
  "multipart without a name": async () =>
    await new Response('--X\r\nContent-Disposition: form-data\r\n\r\n1\r\n--X--\r\n', {
      headers: { "content-type": "multipart/form-data; boundary=X" },
    }).formData(),
  "formData of text": async () => await new Response("a=1", { headers: { "content-type": "text/plain" } }).formData(),
  "TextDecoderStream across chunks": async () => {
    const e = new TextEncoder().encode("é");
    const rs = new ReadableStream({
      start(c) {
        c.enqueue(e.slice(0, 1));
        c.enqueue(e.slice(1));
        c.close();
      },
    });
    const out = [];
    for await (const text of rs.pipeThrough(new TextDecoderStream())) out.push(text);
    return out;
  },
  TextEncoderStream: async () => {
    const s = new TextEncoderStream();
    const w = s.writable.getWriter();
    w.write("\ud83d");
    w.write("\ude00");
    w.close();
    return [...new Uint8Array(await new Response(s.readable).arrayBuffer())];
  },
  "break out of for await": async () => {
    let cancelled = false;
    const rs = new ReadableStream({
      pull(c) {
        c.enqueue(1);
      },
      cancel() {
        cancelled = true;
      },
    });
    for await (const _ of rs) break;
    return [cancelled, rs.locked];
  },
  "scheduler.wait": async () => [await scheduler.wait(1), String(scheduler)],
  "ReadableStream.from": async () => {
    async function* gen() {
      yield "a";
      yield "b";
    }
    const seen = [];
    for await (const chunk of ReadableStream.from(gen())) seen.push(chunk);
    for await (const chunk of ReadableStream.from([1, Promise.resolve(2)])) seen.push(chunk);
    return seen;
  },
};

export default {
  async fetch(request) {
    const url = new URL(request.url);
    switch (url.pathname) {
      case "/bodies":
        return report(bodies);
      case "/platform":
        return report(platform);
      case "/clone-incoming": {
        // The incoming request cloned: both read the same bytes.
        const c = request.clone();
        const used = [request.bodyUsed, c.bodyUsed];
        const copy = await c.text();
        used.push(request.bodyUsed, c.bodyUsed);
        const original = await request.text();
        return new Response(JSON.stringify([copy, original, used, c.method, c.headers.get("x-test")]));
      }
      case "/return-original": {
        // The original answered after its clone was read, with a header set
        // after the clone.
        const r = new Response("original body", { headers: { "x-o": "1" } });
        await r.clone().text();
        r.headers.set("x-late", "2");
        return r;
      }
      default:
        return new Response("not found", { status: 404 });
    }
  },
};
