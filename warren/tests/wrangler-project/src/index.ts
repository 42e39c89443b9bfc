import { Hono } from "hono";
import { cors } from "hono/cors";

type Bindings = {
  GREETING: string;
  FEATURES?: { search: boolean; max_items: number };
};

const app = new Hono<{ Bindings: Bindings }>();

app.use("/api/*", cors({ origin: "https://app.example.com", allowMethods: ["GET", "POST"] }));

app.get("/", (c) => c.text(c.env.GREETING));

app.get("/api/items", (c) =>
  c.json({ items: [{ id: 1, name: "widget" }, { id: 2, name: "gadget" }] }),
);

app.get("/api/items/:id", (c) => {
  const id = Number(c.req.param("id"));
  if (id !== 1 && id !== 2) {
    return c.json({ error: `no item ${id}` }, 404);
  }
  return c.json({ id, name: id === 1 ? "widget" : "gadget" });
});

app.post("/api/echo", async (c) => c.json({ got: await c.req.json() }, 201));

app.get("/api/env", (c) => c.json({ greeting: c.env.GREETING, features: c.env.FEATURES ?? null }));

export default app;
