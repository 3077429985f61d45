// The editor: wires the model, the view, interactions, panels, the server and the websocket.

import { Api, ApiError } from "./api.js";
import { AutoQueue } from "./autoqueue.js";
import { RunFeedback } from "./feedback.js";
import { EditorFiles } from "./files.js";
import { Graph, isLink, typesCompatible } from "./graph.js";
import { UndoStack } from "./history.js";
import { Interaction } from "./interact.js";
import { NodeLibrary } from "./library.js";
import { Lightbox } from "./lightbox.js";
import { handleMessage } from "./messages.js";
import { CategoryMenu, SearchBox } from "./menus.js";
import { Minimap } from "./minimap.js";
import { MODEL_DRAG_TYPE, ModelLibrary } from "./models.js";
import { editorExtraData, promptDocument, toggleMode } from "./modes.js";
import { openNodeMenu } from "./nodemenu.js";
import { SidePanel, Toasts } from "./panels.js";
import { GroupLayer } from "./groups.js";
import { GRID, Settings, SettingsPanel } from "./settings.js";
import { WorkflowTabs } from "./tabs.js";
import { TemplateMenu } from "./templates.js";
import { GraphView } from "./view.js";
import { advanceSeeds } from "./widgets.js";

const AUTOSAVE_KEY = "latentflow.workflow";
const CLIPBOARD_KEY = "latentflow.clipboard";
const DEFAULT_WORKFLOW = "txt2img";

/** The document without the viewport: what undo/redo restores (groups included). */
function snapshot(graph) {
  const doc = graph.toDocument();
  delete doc.ui.view;
  return JSON.stringify(doc);
}

class Editor extends EditorFiles {
  constructor(api) {
    super();
    this.api = api;
    this.graph = new Graph();
    this.toasts = new Toasts(document.querySelector("#toasts"));
    this.view = new GraphView(document.querySelector("#canvas"), this.graph, api);
    this.settings = new Settings();
    this.view.settings = this.settings;
    this.settings.addEventListener("change", (event) => { if (event.detail.name === "linkStyle") this.view.renderLinks(); });
    this.settingsPanel = new SettingsPanel(document.querySelector("#settings"), this.settings);
    this.minimap = new Minimap(document.querySelector("#canvas"), this.view, this.settings);
    this.autoQueue = new AutoQueue(this, document.querySelector("#auto-queue"));
    this.view.onDraw = () => this.minimap.schedule();
    this.view.overlay = () => this.minimap.corner();
    this.tabs = new WorkflowTabs(document.querySelector("#tabs"), this);
    this.view.groupLayer = new GroupLayer(this.view, (text, kind) => this.notify(text, kind));
    this.undo = new UndoStack(snapshot(this.graph));
    this.restoring = false;
    this.lastPointer = [200, 200];
    this.search = new SearchBox(document.querySelector("#search"), this.graph, (type, x, y) => this.addNodeAt(type, x, y));
    this.menu = new CategoryMenu(document.querySelector("#menu"), this.graph, (type, x, y) => this.addNodeAt(type, x, y));
    this.lightbox = new Lightbox(document.querySelector("#lightbox"), (url) => this.openImageWorkflow(url));
    this.library = new NodeLibrary(document.querySelector("#library"), this.graph, (type, x, y) => this.addNodeAt(type, x, y));
    this.models = new ModelLibrary(document.querySelector("#models"), api, this.graph, {
      onPick: (pick, x, y) => this.addNodeAt(pick.type, x, y, { [pick.input]: pick.file }),
      notify: (text, kind) => this.notify(text, kind) });
    this.templates = new TemplateMenu(document.querySelector("#templates"), api, {
      onOpen: (doc, name) => this.tabs.open(doc, name), notify: (text, kind) => this.notify(text, kind) });
    this.panel = new SidePanel(document.querySelector("#panel"), api, {
      onLoad: (doc) => this.load(doc, "history"), notify: (text, kind) => this.notify(text, kind),
      onImage: (url, urls) => this.lightbox.open(url, urls) });
    this.promptSizes = new Map();  // prompt id -> how many nodes it runs (for the progress)
    this.promptTabs = new Map();  // prompt id -> the id of the tab that queued it
    this.feedback = new RunFeedback(document.querySelector("#canvas"), {
      nodeCount: () => this.promptSizes.get(this.runningPrompt) ?? this.graph.nodes.size,
      describe: (id) => { const node = this.graph.nodes.get(id);
        return node ? (node.ui.title || this.graph.spec(node.type)?.title || node.type) : `#${id}`; },
      onTimes: (times) => { if (this.showsPrompt(this.runningPrompt)) this.view.setTimes(times); } });
    this.interaction = new Interaction(this.view, {
      openSearch: (x, y) => { this.pendingLink = null; this.search.open(x, y); },
      linkDropped: (drag, x, y) => this.searchForLink(drag, x, y),
      setMode: (mode) => this.setMode(mode), collapse: () => this.toggleCollapsed(),
      toggleLibrary: () => this.library.toggle(), togglePin: () => this.togglePin(),
      group: () => this.view.groupLayer.groupSelection([...this.view.selection]),
      snapToGrid: () => (this.settings.get("snapToGrid") ? GRID : 0),
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

  /** Does the canvas show the workflow `promptId` was queued from? (yes for others' prompts) */
  showsPrompt(promptId) {
    const tab = this.promptTabs.get(promptId);
    return tab === undefined || tab === this.tabs.current?.id;
  }

  notify(text, kind = "info") {
    this.toasts.show(text, kind);
  }

  changed(detail) {
    if (detail.rerender) this.view.render();
    const doc = this.graph.toDocument();
    localStorage.setItem(AUTOSAVE_KEY, JSON.stringify(doc));
    this.tabs.update(doc);
    if (detail.record && !this.restoring) this.autoQueue?.edited();
    if (detail.record && !this.restoring) {
      const key = detail.input ? `${detail.value[0]}:${detail.input}` : null;  // typing = one step
      this.undo.record(snapshot(this.graph), key);
    }
    this.minimap.schedule();
    document.querySelector("#node-count").textContent = `${this.graph.nodes.size} nodes`;
  }

  snapshot() {
    return snapshot(this.graph);
  }

  restore(state) {
    if (state === null) return;
    const view = { ...this.graph.view };
    this.restoring = true;
    try {
      const doc = JSON.parse(state);
      this.graph.loadDocument({ ...doc, ui: { ...doc.ui, view } });
    } finally {
      this.restoring = false;
    }
  }

  /** Add a node at the pointer (null: the middle of the view); a link dropped on the
   * canvas that opened the search is connected to the new node's first input that takes it;
   * `values` replace some of its widgets' defaults (a model file). Returns the new id. */
  addNodeAt(type, clientX, clientY, values = null) {
    if (clientX === null) {
      const rect = this.view.canvas.getBoundingClientRect();
      [clientX, clientY] = [rect.left + rect.width / 2 - 110, rect.top + rect.height / 3];
    }
    const [x, y] = this.view.toWorld(clientX, clientY);
    const id = this.graph.addNode(type, [x, y], null, {}, values);
    const link = this.pendingLink;
    this.pendingLink = null;
    if (link && this.graph.nodes.has(link.from)) {
      const inputs = this.graph.spec(type).inputs;
      const input = inputs.find((i) => !i.widget && typesCompatible(link.type, i.type)) ??
        inputs.find((i) => i.widget && typesCompatible(link.type, i.type, true));
      if (input) this.graph.connect(link.from, link.output, id, input.name);
    }
    this.view.setSelection([id]);
    return id;
  }

  /** A link dropped on the empty canvas: search among the nodes that can take it. */
  searchForLink(drag, clientX, clientY) {
    this.pendingLink = drag;
    this.search.open(clientX, clientY, (spec) => spec.inputs.some((i) => typesCompatible(drag.type, i.type, !!i.widget)));
  }

  setMode(mode) {
    if (this.view.selection.size) toggleMode(this.graph, [...this.view.selection], mode);
  }

  /** Pin the selection (pinned nodes cannot be dragged), or unpin it when all are pinned. */
  togglePin() {
    const nodes = [...this.view.selection].map((id) => this.graph.nodes.get(id)).filter(Boolean);
    if (!nodes.length) return;
    const pin = !nodes.every((node) => node.ui.pinned);
    for (const node of nodes) {
      if (pin) node.ui.pinned = true;
      else delete node.ui.pinned;
    }
    this.graph.changed({ pinned: nodes.map((node) => node.id) });
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
    this.queuing = true;  // seeds advanced below are not edits (auto queue "on change")
    // Clear old errors now, not after the reply: a fast run may already report new ones.
    this.view.setErrors({});
    const count = Math.max(1, Math.min(100, Number(document.querySelector("#batch-count").value) || 1));
    try {
      for (let i = 0; i < count; i++) {
        const doc = this.graph.toDocument();
        const prompt = promptDocument(this.graph, doc);
        const result = await this.api.queuePrompt(prompt, { front, extraData: editorExtraData(doc) });
        this.promptSizes.set(result.prompt_id, Object.keys(prompt.nodes).length);
        this.promptTabs.set(result.prompt_id, this.tabs.current?.id);  // where its results show
        this.notify(`queued #${result.number}${front ? " at the front" : ""}`);
        advanceSeeds(this.graph);
      }
      this.view.render();
    } catch (error) {
      if (error instanceof ApiError && error.body?.node_errors) this.showValidation(error.body);
      else this.notify(`could not queue: ${error.message}`, "error");
    } finally {
      button.disabled = false;
      this.queuing = false;
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
    handleMessage(this, type, data);
  }

  /** First visit: the shipped default workflow when there is one, else an empty canvas. */
  async start() {
    if (this.tabs.restore()) return;  // the tabs of the last visit (their undo starts afresh)
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
    this.tabs.adopt(this.graph.toDocument());
  }
}

function bindToolbar(editor) {
  const on = (selector, event, handler) => document.querySelector(selector).addEventListener(event, handler);
  on("#queue-button", "click", () => editor.queue());
  on("#queue-front-button", "click", () => editor.queue({ front: true }));
  on("#library-button", "click", () => editor.library.toggle());
  on("#fit-button", "click", () => editor.view.fitView());
  on("#templates-button", "click", () => editor.templates.toggle());
  on("#models-button", "click", () => editor.models.toggle());
  on("#settings-button", "click", () => editor.settingsPanel.toggle());
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
    const model = event.dataTransfer.getData(MODEL_DRAG_TYPE);
    if (model) {
      const { type, input, file } = JSON.parse(model);
      editor.addNodeAt(type, event.clientX, event.clientY, { [input]: file });
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
    onPreview: (blob) => {
      if (editor.view.running && editor.settings.get("previews")) editor.view.setPreview(editor.view.running, blob);
    },
    onOpen: () => document.body.classList.add("connected"),
    onClose: () => document.body.classList.remove("connected"),
  });
  document.body.dataset.ready = "true";
}

main();
