// Warren's prelude for JS workers: imported by the generated entry before the
// worker's own modules, it fills gaps of the engine (StarlingMonkey, as pinned
// by ComponentizeJS) so that the answers ordinary Workers code relies on match
// workerd's. Each part is installed only where the engine lacks it.
//
// - Response.prototype.clone (missing in the engine) and Request.prototype.clone
//   of the incoming request (the engine's throws "Headers are immutable"): the
//   body is teed; the original keeps one branch, the clone gets the other.
// - Reading a body twice fails with workerd's message.
// - formData() of a multipart/form-data body: parsed here (the engine's parser
//   loses the bytes of file parts), with workerd's answers and error messages.
// - navigator (userAgent "Cloudflare-Workers", as on workerd).
// - TextEncoderStream / TextDecoderStream, ReadableStream async iteration.
// - scheduler.wait(ms).
// - ReadableStream.from(iterable), async or not.

const NativeRequest = globalThis.Request;
const NativeResponse = globalThis.Response;

// workerd's messages.
const CLONE_USED = "This ReadableStream is currently locked to a reader,";
const BODY_USED =
  "Body has already been used. It can only be used once. Use tee() first if you need to read it twice.";

// Objects whose own body was teed by a JS clone: the branch they keep, and the
// Response that reads it (made on first use, so that it sees the headers of
// that moment, e.g. the content-type that formData() needs).
const taken = new WeakMap();

function method(fn) {
  return { value: fn, writable: true, enumerable: true, configurable: true };
}

function getter(fn) {
  return { get: fn, enumerable: true, configurable: true };
}

/** Index of `needle` in `bytes` from `from`, or -1. */
function indexOfBytes(bytes, needle, from) {
  const first = needle[0];
  for (let i = bytes.indexOf(first, from); i !== -1 && i + needle.length <= bytes.length; i = bytes.indexOf(first, i + 1)) {
    let j = 1;
    while (j < needle.length && bytes[i + j] === needle[j]) j++;
    if (j === needle.length) return i;
  }
  return -1;
}

const FORM_TYPE =
  "Unrecognized Content-Type header value. FormData can only parse the following MIME types: " +
  "multipart/form-data, application/x-www-form-urlencoded";

/** Whether a content type is application/x-www-form-urlencoded. */
function isUrlEncoded(contentType) {
  return (contentType || "").split(";")[0].trim().toLowerCase() === "application/x-www-form-urlencoded";
}

/** The boundary of a multipart/form-data content type, null for another type. */
function multipartBoundary(contentType) {
  const [essence, ...params] = (contentType || "").split(";");
  if (essence.trim().toLowerCase() !== "multipart/form-data") return null;
  for (const param of params) {
    const eq = param.indexOf("=");
    if (eq === -1 || param.slice(0, eq).trim().toLowerCase() !== "boundary") continue;
    let value = param.slice(eq + 1).trim();
    if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1);
    if (value) return value;
  }
  throw new TypeError(
    "No boundary string in Content-Type header. The multipart/form-data MIME type requires a boundary " +
      "parameter, e.g. 'Content-Type: multipart/form-data; boundary=\"abcd\"'. See RFC 7578, section 4.",
  );
}

/** A quoted parameter (`name="…"`) of a Content-Disposition value, or null. */
function dispositionParam(value, name) {
  const m = new RegExp(`;\\s*${name}="([^"]*)"`, "i").exec(value);
  return m ? m[1] : null;
}

/** Parses a multipart/form-data body as workerd does (RFC 7578). */
function parseMultipart(bytes, boundary) {
  const utf8 = new TextDecoder();
  const ascii = (s) => Uint8Array.from(s, (c) => c.charCodeAt(0) & 0xff);
  const dash = ascii("--" + boundary);
  const form = new FormData();
  let at = indexOfBytes(bytes, dash, 0);
  if (at === -1) throw new TypeError("No initial boundary string (or you have a truncated message).");
  at += dash.length;
  for (;;) {
    if (bytes[at] === 0x2d && bytes[at + 1] === 0x2d) return form;
    if (bytes[at] === 0x0d && bytes[at + 1] === 0x0a) at += 2;
    else if (bytes[at] === 0x0a) at += 1;
    else throw new TypeError("Boundary string was not succeeded by CRLF, LF, or '--'.");
    // The part's headers end at the first empty line.
    let headEnd = indexOfBytes(bytes, ascii("\r\n\r\n"), at);
    let bodyStart = headEnd + 4;
    const lf = indexOfBytes(bytes, ascii("\n\n"), at);
    if (lf !== -1 && (headEnd === -1 || lf < headEnd)) {
      headEnd = lf;
      bodyStart = lf + 2;
    }
    if (headEnd === -1) throw new TypeError("No subsequent boundary string after multipart message.");
    let disposition = null;
    let type = "";
    for (const line of utf8.decode(bytes.subarray(at, headEnd)).split(/\r?\n/)) {
      const colon = line.indexOf(":");
      if (colon === -1) continue;
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim();
      if (name === "content-disposition" && /^form-data\s*(;|$)/i.test(value)) disposition = value;
      else if (name === "content-type") type = value;
    }
    if (disposition === null) throw new TypeError("No valid Content-Disposition header found in FormData part.");
    const name = dispositionParam(disposition, "name");
    if (name === null) throw new TypeError("Content-Disposition header in FormData part is missing a name.");
    const filename = dispositionParam(disposition, "filename");
    // The body ends at the next delimiter, with the line break before it.
    let end = indexOfBytes(bytes, dash, bodyStart);
    while (end !== -1 && end > bodyStart && bytes[end - 1] !== 0x0a) end = indexOfBytes(bytes, dash, end + 1);
    if (end === -1) throw new TypeError("No subsequent boundary string after multipart message.");
    const bodyEnd = end >= bodyStart + 2 && bytes[end - 2] === 0x0d ? end - 2 : Math.max(bodyStart, end - 1);
    const body = bytes.slice(bodyStart, bodyEnd);
    if (filename) form.append(name, new File([body], filename, { type }));
    else form.append(name, utf8.decode(body));
    at = end + dash.length;
  }
}

/** Body accessors of `proto` that see JS clones, and workerd's answers for bodies. */
function installBodies(proto, makeCopy, withClone) {
  const nativeBody = Object.getOwnPropertyDescriptor(proto, "body").get;
  const nativeUsed = Object.getOwnPropertyDescriptor(proto, "bodyUsed").get;
  const reader = (self, state) => {
    if (!state.reader) {
      state.reader = new NativeResponse(state.stream, { headers: self.headers });
    }
    return state.reader;
  };
  const bodyOf = (self) => {
    const state = taken.get(self);
    return state ? reader(self, state).body : nativeBody.call(self);
  };
  const usedOf = (self) => {
    const state = taken.get(self);
    return state ? (state.reader ? state.reader.bodyUsed : false) : nativeUsed.call(self);
  };
  const natives = {};
  /** Calls body method `name` on `self`, or on the reader of its teed branch. */
  const read = (self, name, args) => {
    const state = taken.get(self);
    return state ? reader(self, state)[name](...args) : natives[name].apply(self, args);
  };
  for (const name of ["text", "json", "arrayBuffer", "blob", "formData", "bytes"]) {
    const native = proto[name];
    if (typeof native !== "function") continue;
    natives[name] = native;
    const wrapped = {
      async [name](...args) {
        if (usedOf(this)) throw new TypeError(BODY_USED);
        if (name === "formData") {
          const type = this.headers.get("content-type");
          const boundary = multipartBoundary(type);
          if (boundary !== null) {
            return parseMultipart(new Uint8Array(await read(this, "arrayBuffer", [])), boundary);
          }
          if (!isUrlEncoded(type)) throw new TypeError(FORM_TYPE);
        }
        return read(this, name, args);
      },
    }[name];
    Object.defineProperty(proto, name, method(wrapped));
  }
  if (!withClone) return;
  Object.defineProperty(proto, "body", getter(function () {
    return bodyOf(this);
  }));
  Object.defineProperty(proto, "bodyUsed", getter(function () {
    return usedOf(this);
  }));
  const nativeClone = proto.clone;
  const clone = {
    clone() {
      if (typeof nativeClone === "function" && !taken.has(this)) {
        try {
          return nativeClone.call(this);
        } catch (e) {
          // The engine refuses to clone the incoming request (its headers
          // are immutable); the JS clone below handles it.
          if (!(e instanceof TypeError)) throw e;
        }
      }
      // usedOf checks that `this` is a Request/Response (the native getter throws).
      if (usedOf(this)) throw new TypeError(CLONE_USED);
      const body = bodyOf(this);
      let branch = null;
      if (body) {
        const [kept, given] = body.tee();
        taken.set(this, { stream: kept, reader: null });
        branch = given;
      }
      return makeCopy(this, branch);
    },
  }.clone;
  Object.defineProperty(proto, "clone", method(clone));
}

/** A new Request like `req` with `body` (a stream or null). */
function requestWith(req, body) {
  const init = { method: req.method, headers: req.headers, redirect: req.redirect, signal: req.signal };
  if (body) {
    init.body = body;
    init.duplex = "half";
  }
  return new NativeRequest(req.url, init);
}

/** A new Response like `res` with `body` (a stream or null). */
function responseWith(res, body) {
  const copy = new NativeResponse(body, { status: res.status, statusText: res.statusText, headers: res.headers });
  if (res.url) Object.defineProperty(copy, "url", { value: res.url, enumerable: true, configurable: true });
  if (res.redirected) Object.defineProperty(copy, "redirected", { value: true, enumerable: true, configurable: true });
  return copy;
}

/**
 * `value`, or a plain native copy of it when its body was teed by a JS clone.
 * The generated entry passes each answer of the worker through it.
 */
export function unwrap(value) {
  if (value === null || typeof value !== "object" || !taken.has(value)) return value;
  if (value instanceof NativeResponse) return responseWith(value, value.body);
  return requestWith(value, value.body);
}

const needResponseClone = typeof NativeResponse.prototype.clone !== "function";
installBodies(NativeRequest.prototype, requestWith, true);
installBodies(NativeResponse.prototype, responseWith, needResponseClone);
{
  // Where the engine reads a body itself (fetch, new Request(request)), an
  // object whose body was teed by a JS clone is replaced by a native copy
  // carrying its branch; the generated entry does the same for the worker's
  // answer, with `unwrap`.
  const nativeFetch = globalThis.fetch;
  globalThis.fetch = {
    fetch(input, init) {
      return nativeFetch.call(this, unwrap(input), init);
    },
  }.fetch;
  globalThis.Request = new Proxy(NativeRequest, {
    construct(target, args, newTarget) {
      if (args.length > 0) args[0] = unwrap(args[0]);
      return Reflect.construct(target, args, newTarget === globalThis.Request ? target : newTarget);
    },
  });
}

if (typeof ReadableStream.prototype[Symbol.asyncIterator] !== "function") {
  // for await (const chunk of stream), and stream.values({ preventCancel }).
  async function* values(stream, preventCancel) {
    const reader = stream.getReader();
    let settled = false;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) {
          settled = true;
          return;
        }
        yield value;
      }
    } catch (e) {
      settled = true;
      throw e;
    } finally {
      if (!settled && !preventCancel) await reader.cancel();
      reader.releaseLock();
    }
  }
  const valuesMethod = {
    values(options) {
      return values(this, Boolean(options && options.preventCancel));
    },
  }.values;
  Object.defineProperty(ReadableStream.prototype, "values", { value: valuesMethod, writable: true, configurable: true });
  Object.defineProperty(ReadableStream.prototype, Symbol.asyncIterator, {
    value: valuesMethod,
    writable: true,
    configurable: true,
  });
}

if (typeof globalThis.navigator === "undefined") {
  class Navigator {
    constructor() {
      throw new TypeError("Illegal constructor");
    }
  }
  const navigator = Object.create(Navigator.prototype);
  for (const [name, value] of Object.entries({
    languages: Object.freeze(["en"]),
    language: "en",
    platform: "",
    hardwareConcurrency: 1,
    userAgent: "Cloudflare-Workers",
  })) {
    Object.defineProperty(navigator, name, { value, enumerable: true, configurable: true });
  }
  Object.defineProperty(Navigator.prototype, Symbol.toStringTag, { value: "Navigator", configurable: true });
  Object.defineProperty(globalThis, "Navigator", { value: Navigator, writable: true, configurable: true });
  Object.defineProperty(globalThis, "navigator", { value: navigator, enumerable: true, configurable: true });
}

if (typeof globalThis.TextDecoderStream === "undefined") {
  const decoders = new WeakMap();
  class TextDecoderStream {
    constructor(label = "utf-8", options = {}) {
      const decoder = new TextDecoder(label, options);
      const transform = new TransformStream({
        transform(chunk, controller) {
          const text = decoder.decode(chunk, { stream: true });
          if (text) controller.enqueue(text);
        },
        flush(controller) {
          const text = decoder.decode();
          if (text) controller.enqueue(text);
        },
      });
      decoders.set(this, { decoder, transform });
    }
    get encoding() {
      return decoders.get(this).decoder.encoding;
    }
    get fatal() {
      return decoders.get(this).decoder.fatal;
    }
    get ignoreBOM() {
      return decoders.get(this).decoder.ignoreBOM;
    }
    get readable() {
      return decoders.get(this).transform.readable;
    }
    get writable() {
      return decoders.get(this).transform.writable;
    }
  }
  Object.defineProperty(TextDecoderStream.prototype, Symbol.toStringTag, {
    value: "TextDecoderStream",
    configurable: true,
  });
  Object.defineProperty(globalThis, "TextDecoderStream", { value: TextDecoderStream, writable: true, configurable: true });
}

if (typeof globalThis.TextEncoderStream === "undefined") {
  const encoders = new WeakMap();
  class TextEncoderStream {
    constructor() {
      const encoder = new TextEncoder();
      // A high surrogate ending one chunk waits for the next chunk's low one.
      let pending = "";
      const transform = new TransformStream({
        transform(chunk, controller) {
          let text = pending + String(chunk);
          pending = "";
          const last = text.charCodeAt(text.length - 1);
          if (last >= 0xd800 && last <= 0xdbff) {
            pending = text.slice(-1);
            text = text.slice(0, -1);
          }
          if (text) controller.enqueue(encoder.encode(text));
        },
        flush(controller) {
          if (pending) controller.enqueue(new Uint8Array([0xef, 0xbf, 0xbd]));
        },
      });
      encoders.set(this, transform);
    }
    get encoding() {
      return "utf-8";
    }
    get readable() {
      return encoders.get(this).readable;
    }
    get writable() {
      return encoders.get(this).writable;
    }
  }
  Object.defineProperty(TextEncoderStream.prototype, Symbol.toStringTag, {
    value: "TextEncoderStream",
    configurable: true,
  });
  Object.defineProperty(globalThis, "TextEncoderStream", { value: TextEncoderStream, writable: true, configurable: true });
}

if (typeof globalThis.scheduler === "undefined") {
  class Scheduler {
    constructor() {
      throw new TypeError("Illegal constructor");
    }
    wait(delay, options) {
      const signal = options && options.signal;
      return new Promise((resolve, reject) => {
        if (signal && signal.aborted) return reject(signal.reason);
        const timer = setTimeout(() => resolve(undefined), Number(delay) || 0);
        if (signal) {
          signal.addEventListener("abort", () => {
            clearTimeout(timer);
            reject(signal.reason);
          }, { once: true });
        }
      });
    }
  }
  Object.defineProperty(Scheduler.prototype, Symbol.toStringTag, { value: "Scheduler", configurable: true });
  Object.defineProperty(globalThis, "scheduler", {
    value: Object.create(Scheduler.prototype),
    writable: true,
    enumerable: true,
    configurable: true,
  });
}

if (typeof ReadableStream.from !== "function") {
  Object.defineProperty(ReadableStream, "from", {
    value: function from(iterable) {
      if (iterable == null) throw new TypeError("ReadableStream.from: the argument is not iterable");
      const asyncIter = iterable[Symbol.asyncIterator];
      const syncIter = iterable[Symbol.iterator];
      if (typeof asyncIter !== "function" && typeof syncIter !== "function") {
        throw new TypeError("ReadableStream.from: the argument is not iterable");
      }
      const it = typeof asyncIter === "function" ? asyncIter.call(iterable) : syncIter.call(iterable);
      return new ReadableStream(
        {
          async pull(controller) {
            const { value, done } = await it.next();
            if (done) controller.close();
            else controller.enqueue(await value);
          },
          async cancel(reason) {
            if (typeof it.return === "function") await it.return(reason);
          },
        },
        { highWaterMark: 0 },
      );
    },
    writable: true,
    configurable: true,
  });
}
