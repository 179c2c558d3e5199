// Talking to the Tilesight API: one fetch wrapper so every error reaches the user as the
// server's own message ({"error": "...", "detail": {...}}) next to what caused it.

const KEY_STORAGE = "tilesight.apiKey";

export class ApiError extends Error {
  constructor(status, message, detail = {}, retryAfter = null) {
    super(message);
    this.status = status;
    this.detail = detail || {};
    this.retryAfter = retryAfter;
  }
}

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

export function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function errorFrom(response) {
  let message = `${response.status} ${response.statusText}`;
  let detail = {};
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") message = body.error;
    else if (body && typeof body.detail === "string") message = body.detail;
    if (body && body.detail && typeof body.detail === "object") detail = body.detail;
  } catch {
    // not JSON (a proxy's HTML page): the status line is all we have
  }
  return new ApiError(response.status, message, detail, response.headers.get("Retry-After"));
}

/** GET/POST a JSON endpoint; throws ApiError with the server's message on any non-2xx. */
export async function api(path, { method = "GET", body, signal } = {}) {
  const headers = { Accept: "application/json", ...authHeaders() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "the server cannot be reached; check that Tilesight is running");
  }
  if (!response.ok) throw await errorFrom(response);
  if (response.status === 204) return null;
  return response.json();
}

/** A download that keeps the API key: fetch as a blob, then hand it to the browser. */
export async function download(path, filename) {
  const response = await fetch(path, { headers: authHeaders() });
  if (!response.ok) throw await errorFrom(response);
  const url = URL.createObjectURL(await response.blob());
  const link = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/**
 * Follow a server-sent-event stream with fetch (EventSource cannot send the API key).
 * Calls onEvent({event, data}) per message; reconnects after a pause until stop() is called
 * or shouldStop(lastData) says the stream has nothing more to tell.
 */
export function followEvents(path, onEvent, { shouldStop = () => false, onError = () => {} } = {}) {
  const controller = new AbortController();
  let stopped = false;
  let last = null;

  async function once() {
    const response = await fetch(path, {
      headers: { Accept: "text/event-stream", ...authHeaders() },
      signal: controller.signal,
    });
    if (!response.ok) throw await errorFrom(response);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const message = { event: "message", data: "" };
        const lines = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) message.event = line.slice(6).trim();
          else if (line.startsWith("data:")) lines.push(line.slice(5).replace(/^ /, ""));
        }
        if (!lines.length) continue;
        message.data = lines.join("\n");
        try {
          message.data = JSON.parse(message.data);
        } catch {
          // plain-text data stays a string
        }
        last = message.data;
        onEvent(message);
      }
    }
  }

  (async () => {
    let pause = 1000;
    while (!stopped) {
      try {
        await once();
        pause = 1000;
      } catch (err) {
        if (stopped || err.name === "AbortError") return;
        onError(err);
        if (err instanceof ApiError && err.status >= 400 && err.status < 500 && err.status !== 429) return;
        pause = Math.min(pause * 2, 15_000);
      }
      if (stopped || shouldStop(last)) return;
      await new Promise((resolve) => setTimeout(resolve, pause));
    }
  })();

  return {
    stop() {
      stopped = true;
      controller.abort();
    },
  };
}
