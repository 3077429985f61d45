// Workflow tabs: several workflows open at once. Each tab holds its document (edits are kept
// when switching away) and, for this visit, its undo history; all tabs and which one is
// active persist in localStorage, so a reload reopens them as they were.

import { UndoStack } from "./history.js";

const TABS_KEY = "latentflow.tabs";
const EMPTY = { version: 1, nodes: {} };

function newId() {
  return `t${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
}

export class WorkflowTabs {
  /** `editor` gives load(doc, source), graph, undo, restoring and snapshot(). */
  constructor(root, editor) {
    this.root = root;
    this.editor = editor;
    this.tabs = [];  // [{id, doc}]
    this.active = 0;
    this.undos = new Map();  // tab id -> UndoStack (not persisted)
    this.outputs = new Map();  // tab id -> Map(node id -> its last output) while the tab is not shown
  }

  get current() {
    return this.tabs[this.active];
  }

  static title(doc) {
    const meta = doc?.meta ?? {};
    return meta.title || meta.name || "Unsaved workflow";
  }

  /** Reopen the saved tabs; false when there are none with nodes. */
  restore() {
    let saved = null;
    try { saved = JSON.parse(localStorage.getItem(TABS_KEY) || "null"); } catch { /* damaged: start afresh */ }
    const tabs = (saved?.tabs ?? []).filter((tab) => tab && typeof tab.id === "string" && tab.doc?.nodes);
    // empty canvases only are not worth restoring (a first visit shows the default workflow)
    if (!tabs.some((tab) => Object.keys(tab.doc.nodes).length)) return false;
    this.tabs = tabs;
    this.active = Math.min(Math.max(0, Number(saved.active) || 0), tabs.length - 1);
    this.show(this.current.doc, "the saved tabs");
    return true;
  }

  /** The first tab of a first visit holds `doc` (already loaded by the editor). */
  adopt(doc) {
    this.tabs = [{ id: newId(), doc }];
    this.active = 0;
    this.save();
    this.render();
  }

  save() {
    try {
      localStorage.setItem(TABS_KEY, JSON.stringify({ active: this.active, tabs: this.tabs }));
    } catch { /* storage full: the tabs live on in this page */ }
  }

  /** The active tab's workflow changed (every graph change lands here). */
  update(doc) {
    if (!this.current) return;
    const before = WorkflowTabs.title(this.current.doc);
    this.current.doc = doc;
    this.save();
    if (WorkflowTabs.title(doc) !== before) this.render();
  }

  /** Open `doc` in a new tab and switch to it. */
  open(doc = EMPTY, source = "a new tab") {
    this.stash();
    this.tabs.push({ id: newId(), doc });
    this.active = this.tabs.length - 1;
    this.show(doc, source);
  }

  switchTo(index) {
    if (index === this.active || !this.tabs[index]) return;
    this.stash();
    this.active = index;
    this.show(this.current.doc, WorkflowTabs.title(this.current.doc));
  }

  close(index) {
    if (!this.tabs[index]) return;
    this.undos.delete(this.tabs[index].id);
    this.outputs.delete(this.tabs[index].id);
    if (index !== this.active) {
      this.tabs.splice(index, 1);
      if (index < this.active) this.active -= 1;
      this.save();
      this.render();
      return;
    }
    this.tabs.splice(index, 1);
    if (!this.tabs.length) this.tabs.push({ id: newId(), doc: EMPTY });
    this.active = Math.min(index, this.tabs.length - 1);
    this.show(this.current.doc, WorkflowTabs.title(this.current.doc));
  }

  /** Keep the active tab's document and undo history before leaving it. */
  stash() {
    if (!this.current) return;
    this.current.doc = this.editor.graph.toDocument();
    this.undos.set(this.current.id, this.editor.undo);
    this.outputs.set(this.current.id, new Map(this.editor.view.outputs));
  }

  /** A result for a tab not shown now (a prompt it queued finished a node). */
  keepOutput(tabId, nodeId, output) {
    if (!this.tabs.some((tab) => tab.id === tabId)) return;
    if (!this.outputs.has(tabId)) this.outputs.set(tabId, new Map());
    this.outputs.get(tabId).set(nodeId, output);
  }

  /** Load the active tab's `doc` into the editor (not an undo step) with its undo history. */
  show(doc, source) {
    const editor = this.editor;
    editor.restoring = true;
    try {
      editor.load(doc, source);
    } finally {
      editor.restoring = false;
    }
    editor.undo = this.undos.get(this.current.id) ?? new UndoStack(editor.snapshot());
    editor.view.outputs = new Map(this.outputs.get(this.current.id) ?? []);
    editor.view.applyRunState();
    this.current.doc = editor.graph.toDocument();
    this.save();
    this.render();
  }

  render() {
    const buttons = this.tabs.map((tab, index) => {
      const button = document.createElement("div");
      button.className = `tab${index === this.active ? " active" : ""}`;
      button.dataset.tabId = tab.id;
      const title = WorkflowTabs.title(tab.doc);
      button.title = title;
      button.append(Object.assign(document.createElement("span"), { className: "tab-title", textContent: title }));
      const close = Object.assign(document.createElement("button"), { className: "tab-close", textContent: "×",
                                                                      title: "close this tab" });
      close.addEventListener("click", (event) => { event.stopPropagation(); this.close(index); });
      button.append(close);
      button.addEventListener("click", () => this.switchTo(index));
      button.addEventListener("auxclick", (event) => { if (event.button === 1) this.close(index); });
      return button;
    });
    const add = Object.assign(document.createElement("button"), { id: "new-tab-button", textContent: "+",
                                                                  title: "a new, empty workflow tab" });
    add.addEventListener("click", () => this.open());
    this.root.replaceChildren(...buttons, add);
  }
}
