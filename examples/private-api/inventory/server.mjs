// The private inventory service: listens on 127.0.0.1:3000 only, so nothing
// outside this machine reaches it; workers reach it through the connector.
import { createServer } from "node:http";

const items = [
  { name: "bolts", stock: 120 },
  { name: "nuts", stock: 3 },
  { name: "washers", stock: 48 },
  { name: "springs", stock: 1 },
];
const port = Number(process.env.PORT ?? 3000);
createServer((req, res) => {
  console.log(`inventory: ${req.method} ${req.url} (Host: ${req.headers.host})`);
  if (req.url.startsWith("/items")) {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(items));
  } else {
    res.writeHead(404).end("not found\n");
  }
}).listen(port, "127.0.0.1", () => console.log(`inventory listening on 127.0.0.1:${port}`));
