// The CPU-heavy worker of bench/runtime, served unchanged by workerd and by
// Warren: each request routes its path through a table of regular expressions,
// then parses a ~100 KB JSON document, walks it and serialises it again.

const ROUTES = [];
for (const resource of ["users", "teams", "projects", "invoices", "orders"]) {
  ROUTES.push(
    ["GET", new RegExp(`^/api/v1/${resource}$`), `list-${resource}`],
    ["POST", new RegExp(`^/api/v1/${resource}$`), `create-${resource}`],
    ["GET", new RegExp(`^/api/v1/${resource}/(\\d+)$`), `get-${resource}`],
    ["GET", new RegExp(`^/api/v1/${resource}/(\\d+)/items(?:\\?.*)?$`), `items-${resource}`],
  );
}

// Built at start-up (Warren: once, into the worker's snapshot).
const items = [];
for (let i = 0; i < 700; i++) {
  items.push({
    id: i,
    sku: `SKU-${String(i).padStart(6, "0")}`,
    name: `Item number ${i}`,
    tags: ["blue", "large", i % 2 ? "odd" : "even"],
    price: Math.round(i * 137.5) / 100,
    stock: { warehouse: `wh-${i % 7}`, count: (i * 31) % 97 },
  });
}
const DOCUMENT = JSON.stringify({ version: 3, items });

export default {
  async fetch(request) {
    const path = new URL(request.url).pathname;
    let route = "not-found";
    for (const [method, pattern, name] of ROUTES) {
      const m = pattern.exec(path);
      if (m && method === request.method) {
        route = m[1] ? `${name}:${m[1]}` : name;
        break;
      }
    }
    const doc = JSON.parse(DOCUMENT);
    let value = 0;
    for (const item of doc.items) {
      value += item.price * item.stock.count;
    }
    const out = JSON.stringify(doc);
    return new Response(
      `${route} items=${doc.items.length} bytes=${out.length} value=${value.toFixed(2)}\n`,
      { headers: { "content-type": "text/plain;charset=UTF-8" } },
    );
  },
};
