// The editor: wires the model, the view, interactions, panels, the server and the websocket.

import { Api, ApiError } from "./api.js";
import { describeProblem, downloadJson, isUiGraph, problemsByNode } from "./comfyui.js";
import { RunFeedback } from "./feedback.js";
import { Graph, isLink, typesCompatible } from "./graph.js";
import { UndoStack } from "./history.js";
import { Interaction } from "./interact.js";
import { NodeLibrary } from "./library.js";
import { Lightbox } from "./lightbox.js";
import { CategoryMenu, SearchBox } from "./menus.js";
import { promptDocument, toggleMode } from "./modes.js";
import { openNodeMenu } from "./nodemenu.js";
import { SidePanel, Toasts } from "./panels.js";
import { workflowFromPng } from "./png.js";
import { GraphView } from "./view.js";
import { advanceSeeds } from "./widgets.js";

const AUTOSAVE_KEY = "latentflow.workflow";
const CLIPBOARD_KEY = "latentflow.clipboard";
const DEFAULT_WORKFLOW = "txt2img";

/** The document without the viewport: what undo/redo restores. */
function snapshot(graph) {
  const doc = graph.toDocument();
  delete doc.ui;
  return JSON.stringify(doc);
}

class Editor {
  constructor(api) {
    this.api = api;
    this.graph = new Graph();
    this.toasts = new Toasts(document.querySelector("#toasts"));
    this.view = new GraphView(document.querySelector("#canvas"), this.graph, api);
    this.undo = new UndoStack(snapshot(this.graph));
    this.restoring = false;
    this.lastPointer = [200, 200];
    this.search = new SearchBox(document.querySelector("#search"), this.graph, (type, x, y) => this.addNodeAt(type, x, y));
    this.menu = new CategoryMenu(document.querySelector("#menu"), this.graph, (type, x, y) => this.addNodeAt(type, x, y));
    this.lightbox = new Lightbox(document.querySelector("#lightbox"));
    this.library = new NodeLibrary(document.querySelector("#library"), this.graph, (type, x, y) => this.addNodeAt(type, x, y));
    this.panel = new SidePanel(document.querySelector("#panel"), api, {
      onLoad: (doc) => this.load(doc, "history"), notify: (text, kind) => this.notify(text, kind),
      onImage: (url, urls) => this.lightbox.open(url, urls) });
    this.promptSizes = new Map();  // prompt id -> how many nodes it runs (for the progress)
    this.feedback = new RunFeedback(document.querySelector("#canvas"), {
      nodeCount: () => this.promptSizes.get(this.runningPrompt) ?? this.graph.nodes.size,
      describe: (id) => { const node = this.graph.nodes.get(id);
        return node ? (node.ui.title || this.graph.spec(node.type)?.title || node.type) : `#${id}`; },
      onTimes: (times) => this.view.setTimes(times) });
    this.interaction = new Interaction(this.view, {
      openSearch: (x, y) => { this.pendingLink = null; this.search.open(x, y); },
      linkDropped: (drag, x, y) => this.searchForLink(drag, x, y),
      setMode: (mode) => this.setMode(mode), collapse: () => this.toggleCollapsed(),
      toggleLibrary: () => this.library.toggle(),
      openMenu: (x, y) => this.menu.open(x, y),
      openNodeMenu: (id, x, y) => this.openNodeMenu(id, x, y),
      notify: (text, kind) => this.notify(text, kind),
      copy: () => this.copy(), paste: () => this.paste(),
      undo: () => this.restore(this.undo.undo()), redo: () => this.restore(this.undo.redo()),
      deleteSelected: () => this.deleteSelected(), queue: (front) => this.queue({ front }),
    });
    document.querySelector("#canvas").addEventListener("lightbox", (event) => {
      const urls = [...document.querySelectorAll("#world .node-images img")].map((image) => image.src);
      this.lightbox.open(event.detail.url, urls.length ? urls : [event.detail.url]);
    });
    this.graph.addEventListener("change", (event) => this.changed(event.detail));
    document.querySelector("#canvas").addEventListener("notify", (event) => this.notify(event.detail.text, event.detail.kind));
    document.querySelector("#canvas").addEventListener("pointermove", (event) => {
      this.lastPointer = [event.clientX, event.clientY];
    });
  }

  notify(text, kind = "info") {
    this.toasts.show(text, kind);
  }

  changed(detail) {
    if (detail.rerender) this.view.render();
    localStorage.setItem(AUTOSAVE_KEY, JSON.stringify(this.graph.toDocument()));
    if (detail.record && !this.restoring) {
      const key = detail.input ? `${detail.value[0]}:${detail.input}` : null;  // typing = one step
      this.undo.record(snapshot(this.graph), key);
    }
    document.querySelector("#node-count").textContent = `${this.graph.nodes.size} nodes`;
  }

  restore(state) {
    if (state === null) return;
    const view = { ...this.graph.view };
    this.restoring = true;
    try {
      this.graph.loadDocument({ ...JSON.parse(state), ui: { view } });
    } finally {
      this.restoring = false;
    }
  }

  /** Add a node at the pointer (null: the middle of the view); a link dropped on the
   * canvas that opened the search is connected to the new node's first input that takes it. */
  addNodeAt(type, clientX, clientY) {
    if (clientX === null) {
      const rect = this.view.canvas.getBoundingClientRect();
      [clientX, clientY] = [rect.left + rect.width / 2 - 110, rect.top + rect.height / 3];
    }
    const [x, y] = this.view.toWorld(clientX, clientY);
    const id = this.graph.addNode(type, [x, y]);
    const link = this.pendingLink;
    this.pendingLink = null;
    if (link && this.graph.nodes.has(link.from)) {
      const inputs = this.graph.spec(type).inputs;
      const input = inputs.find((i) => !i.widget && typesCompatible(link.type, i.type)) ??
        inputs.find((i) => i.widget && typesCompatible(link.type, i.type, true));
      if (input) this.graph.connect(link.from, link.output, id, input.name);
    }
    this.view.setSelection([id]);
  }

  /** A link dropped on the empty canvas: search among the nodes that can take it. */
  searchForLink(drag, clientX, clientY) {
    this.pendingLink = drag;
    this.search.open(clientX, clientY, (spec) => spec.inputs.some((i) => typesCompatible(drag.type, i.type, !!i.widget)));
  }

  setMode(mode) {
    if (this.view.selection.size) toggleMode(this.graph, [...this.view.selection], mode);
  }

  toggleCollapsed() {
    const nodes = [...this.view.selection].map((id) => this.graph.nodes.get(id)).filter(Boolean);
    if (!nodes.length) return;
    const collapse = !nodes.every((node) => node.ui.collapsed);
    for (const node of nodes) {
      if (collapse) node.ui.collapsed = true;
      else delete node.ui.collapsed;
    }
    this.graph.changed({ collapsed: nodes.map((node) => node.id) });
  }

  load(doc, source) {
    try {
      this.graph.loadDocument(doc);
      this.view.clearRunState();
      this.view.outputs.clear();
      this.view.setTimes(new Map());
      if (!doc?.ui?.view) this.view.fitView();  // a workflow without a saved view: show all of it
      const unknown = [...this.graph.nodes.values()].filter((n) => !this.graph.spec(n.type)).map((n) => n.type);
      if (unknown.length) this.notify(`unknown node types in ${source}: ${[...new Set(unknown)].join(", ")}`, "error");
    } catch (error) {
      this.notify(`could not load ${source}: ${error.message}`, "error");
    }
  }

  openNodeMenu(id, clientX, clientY) {
    openNodeMenu(this, id, clientX, clientY);
  }

  deleteSelected() {
    if (this.view.selection.size) this.graph.removeNodes([...this.view.selection]);
  }

  copy() {
    const ids = new Set(this.view.selection);
    if (!ids.size) return;
    const nodes = [...this.graph.nodes.values()].filter((n) => ids.has(n.id)).map((n) => JSON.parse(JSON.stringify(n)));
    localStorage.setItem(CLIPBOARD_KEY, JSON.stringify(nodes));
    this.notify(`copied ${nodes.length} node${nodes.length === 1 ? "" : "s"}`);
  }

  /** Paste at the pointer; links between pasted nodes are kept, links to others dropped. */
  paste() {
    const nodes = JSON.parse(localStorage.getItem(CLIPBOARD_KEY) || "[]");
    if (!nodes.length) return;
    const [x, y] = this.view.toWorld(...this.lastPointer);
    const left = Math.min(...nodes.map((n) => n.ui.pos[0])), top = Math.min(...nodes.map((n) => n.ui.pos[1]));
    const ids = new Map();
    for (const node of nodes) {
      if (!this.graph.spec(node.type)) continue;
      const pos = [node.ui.pos[0] - left + x, node.ui.pos[1] - top + y];
      const literal = Object.fromEntries(Object.entries(node.inputs).filter(([, v]) => !isLink(v)));
      ids.set(node.id, this.graph.addNode(node.type, pos, literal, node.ui));
    }
    for (const node of nodes) {
      for (const [name, value] of Object.entries(node.inputs)) {
        if (isLink(value) && ids.has(String(value[0])) && ids.has(node.id)) {
          this.graph.connect(ids.get(String(value[0])), value[1], ids.get(node.id), name);
        }
      }
    }
    this.view.setSelection([...ids.values()]);
  }

  /** Queue the workflow `batch count` times (seeds advance in between); `front`: run next. */
  async queue({ front = false } = {}) {
    const button = document.querySelector("#queue-button");
    button.disabled = true;
    // Clear old errors now, not after the reply: a fast run may already report new ones.
    this.view.setErrors({});
    const count = Math.max(1, Math.min(100, Number(document.querySelector("#batch-count").value) || 1));
    try {
      for (let i = 0; i < count; i++) {
        const prompt = promptDocument(this.graph, this.graph.toDocument());
        const result = await this.api.queuePrompt(prompt, { front });
        this.promptSizes.set(result.prompt_id, Object.keys(prompt.nodes).length);
        this.notify(`queued #${result.number}${front ? " at the front" : ""}`);
        advanceSeeds(this.graph);
      }
      this.view.render();
    } catch (error) {
      if (error instanceof ApiError && error.body?.node_errors) this.showValidation(error.body);
      else this.notify(`could not queue: ${error.message}`, "error");
    } finally {
      button.disabled = false;
    }
    this.panel.refresh();
  }

  showValidation(body) {
    const errors = {};
    for (const [nodeId, entry] of Object.entries(body.node_errors)) {
      // ComfyUI's shape names the input in extra_info.input_name; ours also as `input`.
      errors[nodeId] = entry.errors.map((e) => ({ message: e.message, input: e.input ?? e.extra_info?.input_name,
                                                  hint: e.hint }));
    }
    this.view.setErrors(errors);
    const general = (body.error.errors ?? []).map((e) => e.message);
    this.notify([body.error.message, ...general].join(": "), "error");
  }

  // ------------------------------------------------------------------ websocket

  onMessage(type, data) {
    if (type === "status") {
      document.querySelector("#queue-size").textContent = `queue: ${data.status.exec_info.queue_remaining}`;
      this.panel.refresh();
    } else if (type === "execution_start") {
      this.view.clearRunState();
      this.runningPrompt = data.prompt_id;
      this.outcome = null;
      this.feedback.start();
    } else if (type === "execution_cached") {
      this.feedback.cached(data.nodes ?? []);
    } else if (type === "executing") {
      this.view.setRunning(data.node);
      if (data.node === null) this.feedback.finish(this.outcome ?? "done");
      else this.feedback.executing(data.node);
    } else if (type === "progress") {
      this.view.setProgress(data.node, data.value, data.max);
      this.feedback.progress(data.node, data.value, data.max);
    } else if (type === "executed") {
      this.view.setOutput(data.node, data.output);
      for (const image of data.output?.images ?? []) this.panel.addImage(image);
    } else if (type === "execution_error") {
      this.view.stopRunning();
      this.outcome = "failed";
      const message = `${data.exception_type ? `${data.exception_type}: ` : ""}${data.exception_message}`;
      if (data.node_id) this.view.setErrors({ [data.node_id]: [{ message }] });
      this.notify(`node ${data.node_id ?? "?"} failed: ${message}`, "error");
    } else if (type === "execution_interrupted") {
      this.view.stopRunning();
      this.outcome = "interrupted";
      this.notify("interrupted");
    }
  }

  // ------------------------------------------------------------------ files

  async openFile(file) {
    try {
      const buffer = await file.arrayBuffer();
      const isPng = file.type === "image/png" || file.name.toLowerCase().endsWith(".png");
      const doc = isPng ? await workflowFromPng(buffer) : JSON.parse(new TextDecoder().decode(buffer));
      if (isUiGraph(doc)) await this.loadComfyGraph(doc, file.name);
      else this.load(doc, file.name);
    } catch (error) {
      this.notify(`could not open ${file.name}: ${error.message}`, "error");
    }
  }

  /** A ComfyUI UI-format graph: converted by the server; what it could not map is shown. */
  async loadComfyGraph(graph, source) {
    const { workflow, problems } = await this.api.convert("latentflow", graph);
    this.load(workflow, source);
    const links = this.graph.links().length;
    const summary = `opened ComfyUI workflow ${source}: ${this.graph.nodes.size} nodes, ${links} links`;
    if (!problems.length) {
      this.notify(summary);
      return;
    }
    this.view.setErrors(problemsByNode(problems, new Set(this.graph.nodes.keys())));
    const errors = problems.filter((p) => p.severity !== "warning").length;
    const toast = this.toasts.show(`${summary}; ${problems.length} thing${problems.length === 1 ? "" : "s"} ` +
      `could not be mapped as written:\n${problems.map(describeProblem).join("\n")}`, errors ? "error" : "info", 30000);
    toast.classList.add("toast-report", "conversion-report");
  }

  saveFile() {
    downloadJson(this.graph.toDocument(), `${this.graph.meta.title || "workflow"}.json`);
  }

  /** Download the workflow in ComfyUI's UI format (its frontend opens it). */
  async saveComfyFile() {
    try {
      const { workflow, problems } = await this.api.convert("comfyui", this.graph.toDocument());
      downloadJson(workflow, `${this.graph.meta.title || this.graph.meta.name || "workflow"}.comfyui.json`);
      if (problems.length) {
        const toast = this.toasts.show(`saved, but:\n${problems.map(describeProblem).join("\n")}`, "error", 30000);
        toast.classList.add("toast-report");
      }
    } catch (error) {
      this.notify(`could not save as a ComfyUI workflow: ${error.message}`, "error");
    }
  }

  async saveToServer() {
    const name = prompt("save workflow as", this.graph.meta.name || "my-workflow");
    if (!name) return;
    try {
      this.graph.meta.name = name;
      const result = await this.api.saveWorkflow(name, this.graph.toDocument());
      this.notify(`saved "${result.name}" on the server`);
      await this.listWorkflows();
    } catch (error) {
      this.notify(`could not save: ${error.message}`, "error");
    }
  }

  async listWorkflows() {
    const select = document.querySelector("#workflow-select");
    const { workflows } = await this.api.workflows();
    select.replaceChildren(new Option("open from server…", ""),
      ...workflows.map((w) => new Option(`${w.title} (${w.source})`, w.name)));
  }

  async loadFromServer(name) {
    try {
      this.load(await this.api.workflow(name), name);
    } catch (error) {
      this.notify(`could not load ${name}: ${error.message}`, "error");
    }
  }

  /** First visit: the shipped default workflow when there is one, else an empty canvas. */
  async start() {
    const saved = JSON.parse(localStorage.getItem(AUTOSAVE_KEY) || "null");
    if (saved && Object.keys(saved.nodes ?? {}).length) {  // an empty canvas is not worth restoring
      this.load(saved, "the autosave");
    } else {
      try {
        this.load(await this.api.workflow(DEFAULT_WORKFLOW), DEFAULT_WORKFLOW);
      } catch {
        this.graph.loadDocument({ version: 1, nodes: {} });
      }
    }
    this.undo = new UndoStack(snapshot(this.graph));
  }
}

function bindToolbar(editor) {
  const on = (selector, event, handler) => document.querySelector(selector).addEventListener(event, handler);
  on("#queue-button", "click", () => editor.queue());
  on("#queue-front-button", "click", () => editor.queue({ front: true }));
  on("#library-button", "click", () => editor.library.toggle());
  on("#fit-button", "click", () => editor.view.fitView());
  on("#interrupt-button", "click", () => editor.api.interrupt().catch((e) => editor.notify(e.message, "error")));
  on("#new-button", "click", () => { editor.graph.loadDocument({ version: 1, nodes: {} }); editor.view.clearRunState(); });
  on("#undo-button", "click", () => editor.restore(editor.undo.undo()));
  on("#redo-button", "click", () => editor.restore(editor.undo.redo()));
  on("#save-button", "click", () => editor.saveFile());
  on("#save-comfyui-button", "click", () => editor.saveComfyFile());
  on("#save-server-button", "click", () => editor.saveToServer());
  on("#open-button", "click", () => document.querySelector("#file-input").click());
  on("#file-input", "change", (event) => {
    const [file] = event.target.files;
    if (file) editor.openFile(file);
    event.target.value = "";
  });
  on("#workflow-select", "change", (event) => {
    if (event.target.value) editor.loadFromServer(event.target.value);
    event.target.value = "";
  });
  const canvas = document.querySelector("#canvas");
  canvas.addEventListener("dragover", (event) => event.preventDefault());
  canvas.addEventListener("drop", (event) => {
    event.preventDefault();
    const nodeType = event.dataTransfer.getData("application/x-latentflow-node");
    if (nodeType) {
      editor.addNodeAt(nodeType, event.clientX, event.clientY);
      return;
    }
    const [file] = event.dataTransfer.files;
    if (file) editor.openFile(file);
  });
}

async function main() {
  const api = new Api();
  const editor = new Editor(api);
  window.latentflow = editor;  // handy in the devtools console and for tests
  bindToolbar(editor);
  try {
    editor.graph.setCatalogue(await api.objectInfo());
  } catch (error) {
    editor.notify(`could not load the node catalogue: ${error.message}`, "error");
  }
  api.nodeFailures().then((failures) => {
    for (const failure of failures) editor.notify(`plugin ${failure.source} failed to load: ${failure.message}`, "error");
  }).catch(() => {});
  await editor.start();
  editor.listWorkflows().catch(() => {});
  editor.panel.refresh();
  api.connect({
    onMessage: (type, data) => editor.onMessage(type, data),
    onPreview: (blob) => { if (editor.view.running) editor.view.setPreview(editor.view.running, blob); },
    onOpen: () => document.body.classList.add("connected"),
    onClose: () => document.body.classList.remove("connected"),
  });
  document.body.dataset.ready = "true";
}

main();
