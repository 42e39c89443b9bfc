// The hello-world worker of bench/runtime: served unchanged by workerd and by Warren.
export default {
  async fetch(request, env, ctx) {
    return new Response("Hello, world!\n", {
      headers: { "content-type": "text/plain;charset=UTF-8" },
    });
  },
};
