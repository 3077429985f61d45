// Rendering: nodes are absolutely positioned divs in a transformed "world", links an SVG layer.
// Run state (running node, progress, errors, images) lives here so re-renders keep it.

import { formatSeconds } from "./feedback.js";
import { isLink } from "./graph.js";
import { nodeMode } from "./modes.js";
import { createWidget } from "./widgets.js";

/** The colours a node can be given (ComfyUI's palette names); saved as ui.color. */
export const NODE_COLORS = { red: "#7a3b3b", brown: "#6b4d2e", green: "#3b6b3f", blue: "#2f4d7a", pale_blue: "#3f6b7a",
                             cyan: "#2f6b6b", purple: "#5a3b7a", yellow: "#7a6b2e", black: "#202020" };

const FIT_PADDING = 24;
const FIT_MAX_SCALE = 1;

const PALETTE = {
  MODEL: "#b39ddb", CLIP: "#ffd54f", VAE: "#ef9a9a", CONDITIONING: "#ffb74d", LATENT: "#f48fb1",
  IMAGE: "#64b5f6", MASK: "#81c784", SIGMAS: "#4db6ac", SAMPLER: "#ba68c8", GUIDER: "#9575cd",
  NOISE: "#90a4ae", INT: "#aed581", FLOAT: "#dce775", STRING: "#80cbc4", BOOLEAN: "#e57373",
  COMBO: "#a1887f", "*": "#e0e0e0",
};

export function typeColor(type) {
  if (PALETTE[type]) return PALETTE[type];
  let hash = 0;
  for (const ch of String(type)) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
  return `hsl(${hash % 360} 60% 65%)`;
}

/** A combo of input images (LoadImage's `image`, or any spec flagged `image_upload`). */
function isImageChoice(input) {
  return input.widget?.kind === "combo" && (input.widget.image_upload || input.name === "image");
}

export class GraphView {
  constructor(canvas, graph, api) {
    this.canvas = canvas;
    this.graph = graph;
    this.api = api;
    this.world = canvas.querySelector("#world");
    this.svg = canvas.querySelector("#links");
    this.selection = new Set();
    this.running = null;
    this.progress = new Map();  // node id -> fraction
    this.errors = new Map();  // node id -> [{message, input}]
    this.outputs = new Map();  // node id -> ui output ({images, text})
    this.previews = new Map();  // node id -> object URL
    this.times = new Map();  // node id -> {seconds} | {cached: true} (the last run)
    this.tempLink = null;
    this.settings = null;  // the editor's Settings (link style); null: the defaults
    this.onDraw = null;  // called after the view moved or links were redrawn (the minimap)
    this.overlay = null;
    this.groupLayer = null;  // () => the bottom-right corner fitView keeps clear ({width, height}) or null
  }

  // ------------------------------------------------------------------ coordinates

  applyTransform() {
    const { x, y, scale } = this.graph.view;
    this.world.style.transform = `translate(${x}px, ${y}px) scale(${scale})`;
    this.canvas.style.backgroundPosition = `${x}px ${y}px`;
    this.canvas.style.backgroundSize = `${24 * scale}px ${24 * scale}px`;
    this.onDraw?.();
  }

  /** Zoom and pan so that every node is in view (at most 100%), clear of the corner that
   * `this.overlay()` (the minimap: {width, height} at the bottom right, or null) covers. */
  fitView() {
    const elements = [...this.world.querySelectorAll(".node")];
    const rect = this.canvas.getBoundingClientRect();
    if (!elements.length || !rect.width || !rect.height) {
      Object.assign(this.graph.view, { x: 0, y: 0, scale: 1 });
    } else {
      const left = Math.min(...elements.map((e) => e.offsetLeft)), top = Math.min(...elements.map((e) => e.offsetTop));
      const right = Math.max(...elements.map((e) => e.offsetLeft + e.offsetWidth));
      const bottom = Math.max(...elements.map((e) => e.offsetTop + e.offsetHeight));
      const fit = (width, height) => Math.min(FIT_MAX_SCALE, (width - 2 * FIT_PADDING) / (right - left),
                                              (height - 2 * FIT_PADDING) / (bottom - top));
      // beside the overlay or above it, whichever shows the graph larger
      const overlay = this.overlay?.() ?? { width: 0, height: 0 };
      const areas = [[rect.width - overlay.width, rect.height], [rect.width, rect.height - overlay.height]];
      const [width, height] = areas.reduce((a, b) => (fit(...b) > fit(...a) ? b : a));
      const scale = fit(width, height);
      const x = (width - (right - left) * scale) / 2 - left * scale;
      const y = (height - (bottom - top) * scale) / 2 - top * scale;
      Object.assign(this.graph.view, { x: Math.round(x), y: Math.round(y), scale: Math.round(scale * 1000) / 1000 });
    }
    this.applyTransform();
    this.graph.changed({ view: true }, { rerender: false, record: false });
  }

  /** Client (screen) coordinates -> world coordinates. */
  toWorld(clientX, clientY) {
    const rect = this.canvas.getBoundingClientRect();
    const { x, y, scale } = this.graph.view;
    return [(clientX - rect.left - x) / scale, (clientY - rect.top - y) / scale];
  }

  socketElement(nodeId, direction, name) {
    return this.world.querySelector(`[data-node-id="${CSS.escape(nodeId)}"] [data-socket="${direction}:${CSS.escape(name)}"]`);
  }

  socketCenter(nodeId, direction, name) {
    const element = this.socketElement(nodeId, direction, name);
    if (!element) return null;
    const rect = element.getBoundingClientRect();
    return this.toWorld(rect.left + rect.width / 2, rect.top + rect.height / 2);
  }

  // ------------------------------------------------------------------ render

  render() {
    this.groupLayer?.render();  // groups.js: the frames behind the nodes
    for (const element of [...this.world.querySelectorAll(".node")]) element.remove();
    for (const node of this.graph.nodes.values()) this.world.append(this.renderNode(node));
    for (const id of [...this.selection]) if (!this.graph.nodes.has(id)) this.selection.delete(id);
    this.applyTransform();
    this.renderLinks();
    this.applyRunState();
  }

  renderNode(node) {
    const spec = this.graph.spec(node.type);
    const element = document.createElement("div");
    element.className = "node";
    element.dataset.nodeId = node.id;
    element.dataset.nodeType = node.type;
    element.style.left = `${node.ui.pos[0]}px`;
    element.style.top = `${node.ui.pos[1]}px`;
    element.classList.toggle("selected", this.selection.has(node.id));
    const mode = nodeMode(node);
    if (mode) element.classList.add(`mode-${mode}`);
    element.classList.toggle("collapsed", !!node.ui.collapsed);
    element.classList.toggle("pinned", !!node.ui.pinned);
    element.classList.toggle("reroute", !!spec?.editorOnly);
    if (NODE_COLORS[node.ui.color]) {
      element.dataset.color = node.ui.color;
      element.style.setProperty("--node-color", NODE_COLORS[node.ui.color]);
    }
    if (spec?.outputNode && spec.inputs.some((input) => input.type === "IMAGE")) element.classList.add("output-node");
    const title = document.createElement("div");
    title.className = "node-title";
    const toggle = Object.assign(document.createElement("span"), {
      className: "collapse-toggle", title: "collapse / expand (Alt+C)" });  // its arrow is CSS: not in the title's text
    toggle.addEventListener("pointerdown", (event) => event.stopPropagation());
    toggle.addEventListener("click", () => {
      if (node.ui.collapsed) delete node.ui.collapsed;
      else node.ui.collapsed = true;
      this.graph.changed({ collapsed: [node.id] });
    });
    title.append(toggle, document.createTextNode(node.ui.title || spec?.title || node.type));
    title.title = spec ? `${spec.type}\n${spec.description}` : `unknown node type ${node.type}`;
    const badge = document.createElement("span");
    badge.className = "node-id";
    badge.textContent = `#${node.id}`;
    const time = Object.assign(document.createElement("span"), { className: "node-time" });
    title.append(...(mode ? [Object.assign(document.createElement("span"), {
      className: "node-mode-badge", textContent: mode === "muted" ? "muted" : "bypass" })] : []), time, badge);
    if (node.ui.pinned) title.append(Object.assign(document.createElement("span"), {
      className: "node-pin", textContent: "📌", title: "pinned: cannot be moved (P or the node menu unpins)" }));
    const progress = document.createElement("div");
    progress.className = "node-progress";
    progress.append(Object.assign(document.createElement("div"), { className: "node-progress-bar" }));
    element.append(title, progress);
    if (!spec) {
      element.classList.add("unknown");
      element.append(Object.assign(document.createElement("div"), {
        className: "node-errors", textContent: `unknown node type "${node.type}": is its plugin installed?` }));
      return element;
    }
    const sockets = document.createElement("div");
    sockets.className = "node-sockets";
    const inputs = document.createElement("div");
    inputs.className = "node-inputs";
    const outputs = document.createElement("div");
    outputs.className = "node-outputs";
    for (const input of spec.inputs.filter((i) => !i.widget)) inputs.append(this.socketRow("in", input, input.optional));
    for (const output of spec.outputs) outputs.append(this.socketRow("out", output, false));
    sockets.append(inputs, outputs);
    const widgets = document.createElement("div");
    widgets.className = "node-widgets";
    for (const input of spec.inputs.filter((i) => i.widget)) widgets.append(this.widgetRow(node, input));
    const extras = ["node-errors", "node-images", "node-text"].map((className) =>
      Object.assign(document.createElement("div"), { className }));
    element.append(sockets, widgets, ...extras);
    return element;
  }

  socketRow(direction, socket, optional) {
    const row = document.createElement("div");
    row.className = `socket-row ${direction}`;
    row.dataset.input = socket.name;
    const dot = document.createElement("span");
    dot.className = "socket";
    dot.dataset.socket = `${direction}:${socket.name}`;
    dot.dataset.type = socket.type;
    dot.style.setProperty("--socket-color", typeColor(socket.type));
    dot.title = `${socket.name}: ${socket.type}`;
    const label = document.createElement("span");
    label.className = "socket-label";
    label.textContent = socket.name + (optional ? "?" : "");
    row.append(...(direction === "in" ? [dot, label] : [label, dot]));
    return row;
  }

  widgetRow(node, input) {
    const value = node.inputs[input.name];
    const row = createWidget(input, isLink(value) ? undefined : value, {
      control: node.ui.controls?.[input.name],
      upload: isImageChoice(input) ? (file) => this.upload(file) : null,
      onChange: (newValue) => this.graph.setValue(node.id, input.name, newValue),
      onControl: (mode) => {
        node.ui.controls = { ...(node.ui.controls ?? {}), [input.name]: mode };
        this.graph.changed({ value: [node.id] }, { rerender: false });
      },
    });
    // Widgets take links too (e.g. one seed for several samplers): a socket on the left.
    const dot = document.createElement("span");
    dot.className = "socket widget-socket";
    dot.dataset.socket = `in:${input.name}`;
    dot.dataset.type = input.type;
    dot.style.setProperty("--socket-color", typeColor(input.type));
    row.prepend(dot);
    if (isLink(value)) row.classList.add("linked");
    return row;
  }

  async upload(file) {
    try {
      return await this.api.uploadImage(file);
    } catch (error) {
      this.canvas.dispatchEvent(new CustomEvent("notify", { detail: { text: `upload failed: ${error.message}`, kind: "error" } }));
      return null;
    }
  }

  /** A link's SVG path in the "linkStyle" setting: spline (default), straight or orthogonal. */
  linkPath([x1, y1], [x2, y2]) {
    const style = this.settings?.get("linkStyle");
    if (style === "straight") return `M ${x1} ${y1} L ${x2} ${y2}`;
    if (style === "orthogonal") {
      const mid = x2 > x1 + 40 ? (x1 + x2) / 2 : x1 + 20;
      return x2 > x1 + 40 ? `M ${x1} ${y1} H ${mid} V ${y2} H ${x2}`
        : `M ${x1} ${y1} H ${mid} V ${(y1 + y2) / 2} H ${x2 - 20} V ${y2} H ${x2}`;
    }
    const bend = Math.max(40, Math.abs(x2 - x1) / 2);
    return `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`;
  }

  /** The type a link carries: a reroute's "*" output carries what flows into it. */
  linkType(from, output, depth = 0) {
    const type = this.socketElement(from, "out", output)?.dataset.type;
    const source = this.graph.nodes.get(from);
    const passed = source?.inputs.input;
    if (type !== "*" || !this.graph.spec(source?.type)?.editorOnly || !isLink(passed) || depth > 32) return type;
    return this.linkType(String(passed[0]), this.graph.outputName(String(passed[0]), passed[1]), depth + 1);
  }

  renderLinks() {
    const paths = [];
    for (const link of this.graph.links()) {
      const from = this.socketCenter(link.from, "out", link.output);
      const to = this.socketCenter(link.to, "in", link.input);
      if (!from || !to) continue;
      const type = this.linkType(link.from, link.output);
      paths.push(`<path class="link" data-link="${link.from}:${link.output}->${link.to}:${link.input}" ` +
                 `stroke="${typeColor(type)}" d="${this.linkPath(from, to)}"/>`);
    }
    if (this.tempLink) {
      paths.push(`<path class="link temp${this.tempLink.refused ? " refused" : ""}" d="${this.linkPath(this.tempLink.from, this.tempLink.to)}"/>`);
    }
    this.svg.innerHTML = paths.join("");
    this.onDraw?.();
  }

  moveNodeElements(ids) {
    for (const id of ids) {
      const element = this.world.querySelector(`[data-node-id="${CSS.escape(id)}"]`);
      const node = this.graph.nodes.get(id);
      if (element && node) {
        element.style.left = `${node.ui.pos[0]}px`;
        element.style.top = `${node.ui.pos[1]}px`;
      }
    }
    this.renderLinks();
  }

  setSelection(ids) {
    this.selection = new Set(ids);
    for (const element of this.world.querySelectorAll(".node")) {
      element.classList.toggle("selected", this.selection.has(element.dataset.nodeId));
    }
  }

  // ------------------------------------------------------------------ run state

  clearRunState() {
    this.running = null;
    this.progress.clear();
    this.errors.clear();
    this.applyRunState();
  }

  /** Mark `nodeId` as running; the previous node finished, so its bar shows full. */
  setRunning(nodeId) {
    if (this.running && this.running !== nodeId) this.progress.set(this.running, 1);
    this.running = nodeId;
    this.applyRunState();
  }

  /** The run stopped (error or interrupt): nothing is running, nothing more finished. */
  stopRunning() {
    this.running = null;
    this.applyRunState();
  }

  setProgress(nodeId, value, max) {
    this.progress.set(nodeId, max ? value / max : 0);
    this.applyRunState();
  }

  setErrors(errorsByNode) {
    this.errors = new Map(Object.entries(errorsByNode));
    this.applyRunState();
  }

  setOutput(nodeId, output) {
    this.outputs.set(nodeId, output);
    this.applyRunState();
  }

  setPreview(nodeId, blob) {
    if (this.previews.has(nodeId)) URL.revokeObjectURL(this.previews.get(nodeId));
    this.previews.set(nodeId, URL.createObjectURL(blob));
    this.applyRunState();
  }

  applyRunState() {
    for (const element of this.world.querySelectorAll(".node")) {
      const id = element.dataset.nodeId;
      element.classList.toggle("running", id === this.running);
      const bar = element.querySelector(".node-progress-bar");
      if (bar) bar.style.width = `${Math.round((this.progress.get(id) ?? 0) * 100)}%`;
      this.renderErrors(element, this.errors.get(id) ?? []);
      this.renderOutput(element, id);
      this.renderTime(element, this.times.get(id));
    }
  }

  setTimes(times) {
    this.times = new Map(times);
    this.applyRunState();
  }

  renderTime(element, time) {
    const label = element.querySelector(".node-time");
    if (!label) return;
    label.classList.toggle("cached", !!time?.cached);
    label.textContent = time ? (time.cached ? "cached" : formatSeconds(time.seconds)) : "";
    label.title = time ? (time.cached ? "not run: its inputs did not change" : "time it took in the last run") : "";
  }

  renderErrors(element, errors) {
    element.classList.toggle("has-error", errors.length > 0);
    for (const row of element.querySelectorAll(".input-error")) row.classList.remove("input-error");
    const box = element.querySelector(".node-errors");
    if (!box || element.classList.contains("unknown")) return;
    box.replaceChildren(...errors.map((error) => {
      const line = document.createElement("div");
      line.className = "node-error";
      line.textContent = (error.input ? `${error.input}: ` : "") + error.message + (error.hint ? ` (${error.hint})` : "");
      return line;
    }));
    for (const error of errors) {
      if (!error.input) continue;
      element.querySelector(`[data-widget="${CSS.escape(error.input)}"], .socket-row[data-input="${CSS.escape(error.input)}"]`)
        ?.classList.add("input-error");
    }
  }

  renderOutput(element, id) {
    const images = element.querySelector(".node-images");
    const text = element.querySelector(".node-text");
    if (!images || !text) return;
    const output = this.outputs.get(id);
    const preview = id === this.running ? this.previews.get(id) : null;
    const urls = preview ? [preview] : (output?.images ?? []).map((image) => this.api.viewUrl(image));
    if (images.dataset.urls !== urls.join("|")) {
      images.dataset.urls = urls.join("|");
      images.replaceChildren(...urls.map((url) => {
        const image = Object.assign(document.createElement("img"), { src: url, draggable: false, title: "click to enlarge" });
        image.addEventListener("pointerdown", (event) => event.stopPropagation());
        image.addEventListener("click", () => this.canvas.dispatchEvent(new CustomEvent("lightbox", { detail: { url } })));
        return image;
      }));
    }
    text.textContent = (output?.text ?? []).join("\n");
  }
}
