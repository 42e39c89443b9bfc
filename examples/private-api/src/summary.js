export function summarize(items) {
  const low = items.filter((i) => i.stock < 5).map((i) => i.name);
  const total = items.reduce((n, i) => n + i.stock, 0);
  return { items: items.length, total, low_stock: low };
}
