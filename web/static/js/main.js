// The editor: wires the model, the view, interactions, panels, the server and the websocket.

import { Api, ApiError } from "./api.js";
import { describeProblem, downloadJson, isUiGraph, problemsByNode } from "./comfyui.js";
import { Graph, isLink } from "./graph.js";
import { UndoStack } from "./history.js";
import { Interaction } from "./interact.js";
import { CategoryMenu, SearchBox, showActions } from "./menus.js";
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
    this.panel = new SidePanel(document.querySelector("#panel"), api, {
      onLoad: (doc) => this.load(doc, "history"), notify: (text, kind) => this.notify(text, kind) });
    this.interaction = new Interaction(this.view, {
      openSearch: (x, y) => this.search.open(x, y),
      openMenu: (x, y) => this.menu.open(x, y),
      openNodeMenu: (id, x, y) => this.openNodeMenu(id, x, y),
      notify: (text, kind) => this.notify(text, kind),
      copy: () => this.copy(), paste: () => this.paste(),
      undo: () => this.restore(this.undo.undo()), redo: () => this.restore(this.undo.redo()),
      deleteSelected: () => this.deleteSelected(), queue: () => this.queue(),
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

  addNodeAt(type, clientX, clientY) {
    const [x, y] = this.view.toWorld(clientX, clientY);
    const id = this.graph.addNode(type, [x, y]);
    this.view.setSelection([id]);
  }

  load(doc, source) {
    try {
      this.graph.loadDocument(doc);
      this.view.clearRunState();
      this.view.outputs.clear();
      this.view.applyRunState();
      const unknown = [...this.graph.nodes.values()].filter((n) => !this.graph.spec(n.type)).map((n) => n.type);
      if (unknown.length) this.notify(`unknown node types in ${source}: ${[...new Set(unknown)].join(", ")}`, "error");
    } catch (error) {
      this.notify(`could not load ${source}: ${error.message}`, "error");
    }
  }

  openNodeMenu(id, clientX, clientY) {
    const node = this.graph.nodes.get(id);
    showActions(document.querySelector("#menu"), clientX, clientY, [
      { id: "rename", label: "Rename…", run: () => {
        const title = prompt("node title", node.ui.title || this.graph.spec(node.type)?.title || node.type);
        if (title !== null) {
          node.ui.title = title.trim() || undefined;
          this.graph.changed({ renamed: [id] });
        }
      } },
      { id: "duplicate", label: "Duplicate", run: () => { this.copy(); this.lastPointer = [clientX + 30, clientY + 30]; this.paste(); } },
      { id: "delete", label: `Delete ${this.view.selection.size > 1 ? `${this.view.selection.size} nodes` : "node"}`,
        run: () => this.deleteSelected() },
    ]);
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

  async queue() {
    const button = document.querySelector("#queue-button");
    button.disabled = true;
    // Clear old errors now, not after the reply: a fast run may already report new ones.
    this.view.setErrors({});
    try {
      const result = await this.api.queuePrompt(this.graph.toDocument());
      this.notify(`queued #${result.number}`);
      advanceSeeds(this.graph);
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
    } else if (type === "executing") {
      this.view.setRunning(data.node);
    } else if (type === "progress") {
      this.view.setProgress(data.node, data.value, data.max);
    } else if (type === "executed") {
      this.view.setOutput(data.node, data.output);
      for (const image of data.output?.images ?? []) this.panel.addImage(image);
    } else if (type === "execution_error") {
      this.view.stopRunning();
      const message = `${data.exception_type ? `${data.exception_type}: ` : ""}${data.exception_message}`;
      if (data.node_id) this.view.setErrors({ [data.node_id]: [{ message }] });
      this.notify(`node ${data.node_id ?? "?"} failed: ${message}`, "error");
    } else if (type === "execution_interrupted") {
      this.view.stopRunning();
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
