// Talking to the server: REST calls and the websocket (with reconnect).

const TOKEN_KEY = "latentflow.token";

/** The auth token from ?token= (remembered for this tab), if the server uses one. */
function authToken() {
  const fromUrl = new URLSearchParams(location.search).get("token");
  if (fromUrl) sessionStorage.setItem(TOKEN_KEY, fromUrl);
  return fromUrl || sessionStorage.getItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `request failed with status ${status}`);
    this.status = status;
    this.body = body;
  }
}

export class Api {
  constructor() {
    this.token = authToken();
    this.clientId = sessionStorage.getItem("latentflow.clientId") || crypto.randomUUID().replaceAll("-", "");
    sessionStorage.setItem("latentflow.clientId", this.clientId);
  }

  headers(extra = {}) {
    return this.token ? { ...extra, Authorization: `Bearer ${this.token}` } : extra;
  }

  async request(method, path, body) {
    const options = { method, headers: this.headers() };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = { error: { message: text } }; }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  objectInfo() { return this.request("GET", "/api/object_info"); }
  nodeFailures() { return this.request("GET", "/api/node_failures"); }
  /** Queue `prompt`; `front` puts it before everything pending (ComfyUI's "Queue Front"). */
  queuePrompt(prompt, { front = false, extraData = {} } = {}) {
    const body = { prompt, client_id: this.clientId, extra_data: extraData };
    if (front) body.front = true;
    return this.request("POST", "/api/prompt", body);
  }
  queue() { return this.request("GET", "/api/queue"); }
  deleteFromQueue(ids) { return this.request("POST", "/api/queue", { delete: ids }); }
  interrupt(promptId) { return this.request("POST", "/api/interrupt", promptId ? { prompt_id: promptId } : {}); }
  history(maxItems = 20, offset = 0) { return this.request("GET", `/api/history?max_items=${maxItems}&offset=${offset}`); }
  deleteHistory(ids) { return this.request("POST", "/api/history", { delete: ids }); }
  workflows() { return this.request("GET", "/api/workflows"); }
  workflow(name) { return this.request("GET", `/api/workflows/${encodeURIComponent(name)}`); }
  saveWorkflow(name, doc) { return this.request("POST", `/api/workflows/${encodeURIComponent(name)}`, doc); }
  /** Convert a workflow: `to` is "latentflow" (from a ComfyUI UI graph or prompt) or "comfyui". */
  convert(to, workflow) { return this.request("POST", "/api/convert", { to, workflow }); }

  /** Upload an image to input/ (multipart, like ComfyUI); returns {name, subfolder, type}. */
  async uploadImage(file) {
    const form = new FormData();
    form.append("image", file, file.name);
    const response = await fetch("/api/upload/image", { method: "POST", body: form, headers: this.headers() });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  /** URL of an output image (the token rides along for <img> tags when there is one). */
  viewUrl(image) {
    const params = new URLSearchParams({ filename: image.filename, subfolder: image.subfolder || "", type: image.type || "output" });
    if (this.token) params.set("token", this.token);
    return `/api/view?${params}`;
  }

  /** Open the websocket; `onMessage(type, data)` for JSON, `onPreview(blob)` for binary frames. */
  connect({ onMessage, onPreview, onOpen, onClose }) {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const params = new URLSearchParams({ clientId: this.clientId });
    if (this.token) params.set("token", this.token);
    let delay = 500;
    const open = () => {
      const socket = new WebSocket(`${scheme}://${location.host}/ws?${params}`);
      socket.binaryType = "arraybuffer";
      socket.onopen = () => { delay = 500; onOpen?.(); };
      socket.onmessage = (event) => {
        if (typeof event.data === "string") {
          const message = JSON.parse(event.data);
          onMessage(message.type, message.data);
        } else {
          const preview = parsePreviewFrame(event.data);
          if (preview) onPreview?.(preview);
        }
      };
      socket.onclose = () => {
        onClose?.();
        setTimeout(open, delay);
        delay = Math.min(delay * 2, 10000);
      };
    };
    open();
  }
}

/** ComfyUI's binary frame: u32 event (1 = preview), u32 format (1 = JPEG, 2 = PNG), bytes. */
export function parsePreviewFrame(buffer) {
  const view = new DataView(buffer);
  if (buffer.byteLength < 8 || view.getUint32(0) !== 1) return null;
  const type = view.getUint32(4) === 2 ? "image/png" : "image/jpeg";
  return new Blob([buffer.slice(8)], { type });
}
