// Pointer and keyboard interaction: drag nodes, draw links, pan, zoom, select, edit shortcuts.

import { isLink } from "./graph.js";

const MIN_SCALE = 0.2;
const MAX_SCALE = 3;

export class Interaction {
  /**
   * @param view GraphView
   * @param hooks {openSearch(clientX, clientY), openMenu(clientX, clientY), openNodeMenu(id, clientX, clientY), notify(text, kind),
   *               copy(), paste(), undo(), redo(), deleteSelected(), queue(front), setMode(mode), collapse(),
   *               toggleLibrary(), togglePin(), group(), linkDropped(drag, clientX, clientY),
   *               snapToGrid(): the grid size when moved nodes snap to it, else 0}
   */
  constructor(view, hooks) {
    this.view = view;
    this.graph = view.graph;
    this.hooks = hooks;
    this.drag = null;
    const canvas = view.canvas;
    canvas.addEventListener("pointerdown", (event) => this.pointerDown(event));
    canvas.addEventListener("pointermove", (event) => this.pointerMove(event));
    canvas.addEventListener("pointerup", (event) => this.pointerUp(event));
    canvas.addEventListener("pointercancel", () => this.cancel());
    canvas.addEventListener("wheel", (event) => this.wheel(event), { passive: false });
    canvas.addEventListener("dblclick", (event) => {
      if (!event.target.closest(".node")) hooks.openSearch(event.clientX, event.clientY);
    });
    canvas.addEventListener("contextmenu", (event) => {
      event.preventDefault();
      const nodeElement = event.target.closest(".node");
      if (!nodeElement) {
        hooks.openMenu(event.clientX, event.clientY);
        return;
      }
      const id = nodeElement.dataset.nodeId;
      if (!view.selection.has(id)) view.setSelection([id]);
      hooks.openNodeMenu(id, event.clientX, event.clientY);
    });
    window.addEventListener("keydown", (event) => this.keyDown(event));
  }

  pointerDown(event) {
    if (event.button !== 0 && event.button !== 1) return;
    const socket = event.target.closest(".socket");
    const nodeElement = event.target.closest(".node");
    // preventDefault below also stops the focus change a click would make: leave text fields
    // explicitly, so Delete and Ctrl+Z then act on the graph, not on the field.
    if (document.activeElement?.closest?.("#canvas input, #canvas textarea, #canvas select")) document.activeElement.blur();
    this.view.canvas.setPointerCapture(event.pointerId);
    if (socket && nodeElement) {
      this.startLink(event, nodeElement.dataset.nodeId, socket);
    } else if (nodeElement && event.button === 0) {
      this.startNodeDrag(event, nodeElement.dataset.nodeId);
    } else if (event.button === 0 && (event.shiftKey || event.ctrlKey)) {
      const start = this.view.toWorld(event.clientX, event.clientY);
      this.drag = { kind: "select", start, additive: new Set(this.view.selection), box: this.makeBox() };
    } else {
      if (!event.shiftKey && !event.ctrlKey) this.view.setSelection([]);
      this.drag = { kind: "pan", x: event.clientX, y: event.clientY, moved: false };
    }
    event.preventDefault();
  }

  startLink(event, nodeId, socket) {
    const [direction, name] = socket.dataset.socket.split(/:(.*)/s);
    if (direction === "out") {
      this.drag = { kind: "link", from: nodeId, output: name, type: socket.dataset.type };
    } else {
      // Dragging from a linked input picks the link up again (to move or drop it).
      const value = this.graph.nodes.get(nodeId)?.inputs[name];
      if (!isLink(value)) {
        this.drag = null;
        return;
      }
      const from = String(value[0]), output = this.graph.outputName(from, value[1]);
      this.graph.disconnect(nodeId, name);
      this.drag = { kind: "link", from, output, type: this.view.socketElement(from, "out", output)?.dataset.type };
    }
    const start = this.view.socketCenter(this.drag.from, "out", this.drag.output);
    this.view.tempLink = { from: start, to: this.view.toWorld(event.clientX, event.clientY) };
    this.view.renderLinks();
  }

  startNodeDrag(event, nodeId) {
    const selection = this.view.selection;
    if (event.shiftKey || event.ctrlKey) {
      const next = new Set(selection);
      if (next.has(nodeId)) next.delete(nodeId); else next.add(nodeId);
      this.view.setSelection(next);
    } else if (!selection.has(nodeId)) {
      this.view.setSelection([nodeId]);
    }
    // pinned nodes stay where they are (they can still be selected, linked and edited)
    const ids = [...this.view.selection].filter((id) => !this.graph.nodes.get(id)?.ui.pinned);
    this.drag = { kind: "nodes", ids, last: this.view.toWorld(event.clientX, event.clientY), moved: false };
  }

  pointerMove(event) {
    const drag = this.drag;
    if (!drag) return;
    if (drag.kind === "pan") {
      this.graph.view.x += event.clientX - drag.x;
      this.graph.view.y += event.clientY - drag.y;
      drag.x = event.clientX;
      drag.y = event.clientY;
      drag.moved = true;
      this.view.applyTransform();
    } else if (drag.kind === "nodes") {
      const point = this.view.toWorld(event.clientX, event.clientY);
      const dx = point[0] - drag.last[0], dy = point[1] - drag.last[1];
      if ((Math.abs(dx) < 0.5 && Math.abs(dy) < 0.5) || !drag.ids.length) return;
      drag.last = point;
      drag.moved = true;
      this.graph.move(drag.ids, dx, dy, false);
      this.view.moveNodeElements(drag.ids);
    } else if (drag.kind === "link") {
      const target = this.inputUnder(event);
      const refused = target ? !!this.graph.linkProblem(drag.from, drag.output, target.nodeId, target.name) : false;
      this.view.tempLink = { ...this.view.tempLink, to: this.view.toWorld(event.clientX, event.clientY), refused };
      this.view.renderLinks();
    } else if (drag.kind === "select") {
      const point = this.view.toWorld(event.clientX, event.clientY);
      this.updateBox(drag, point);
    }
  }

  pointerUp(event) {
    const drag = this.drag;
    this.drag = null;
    if (!drag) return;
    if (drag.kind === "nodes" && drag.moved) {
      if (this.hooks.snapToGrid?.()) this.snap(drag.ids, this.hooks.snapToGrid());
      this.graph.move(drag.ids, 0, 0, true);  // one undo step for the whole drag
    } else if (drag.kind === "link") {
      this.view.tempLink = null;
      const target = this.inputUnder(event);
      if (target) {
        const problem = this.graph.connect(drag.from, drag.output, target.nodeId, target.name);
        if (problem) this.hooks.notify(`link refused: ${problem}`, "error");
      } else if (!document.elementFromPoint(event.clientX, event.clientY)?.closest(".node")) {
        // dropped on the empty canvas: search the nodes that take it (ComfyUI's link release)
        this.hooks.linkDropped(drag, event.clientX, event.clientY);
      }
      this.view.renderLinks();
    } else if (drag.kind === "select") {
      drag.box.remove();
    } else if (drag.kind === "pan" && drag.moved) {
      this.graph.changed({ view: true }, { rerender: false, record: false });
    }
  }

  /** Round the positions of `ids` to the `grid` (the "snap to grid" setting). */
  snap(ids, grid) {
    for (const id of ids) {
      const node = this.graph.nodes.get(id);
      if (node) node.ui.pos = node.ui.pos.map((v) => Math.round(v / grid) * grid);
    }
    this.view.moveNodeElements(ids);
  }

  cancel() {
    if (this.drag?.box) this.drag.box.remove();
    this.drag = null;
    this.view.tempLink = null;
    this.view.renderLinks();
  }

  /** The input socket (or widget row) under the pointer, if any. */
  inputUnder(event) {
    const element = document.elementFromPoint(event.clientX, event.clientY);
    const nodeElement = element?.closest(".node");
    if (!nodeElement) return null;
    const socket = element.closest('[data-socket^="in:"]') ??
      element.closest(".socket-row.in, .widget")?.querySelector('[data-socket^="in:"]');
    if (!socket) return null;
    return { nodeId: nodeElement.dataset.nodeId, name: socket.dataset.socket.slice(3) };
  }

  makeBox() {
    const box = document.createElement("div");
    box.className = "selection-box";
    this.view.world.append(box);
    return box;
  }

  updateBox(drag, point) {
    const [x0, y0] = drag.start, [x1, y1] = point;
    const left = Math.min(x0, x1), top = Math.min(y0, y1), right = Math.max(x0, x1), bottom = Math.max(y0, y1);
    Object.assign(drag.box.style, { left: `${left}px`, top: `${top}px`, width: `${right - left}px`, height: `${bottom - top}px` });
    const chosen = new Set(drag.additive);
    for (const element of this.view.world.querySelectorAll(".node")) {
      const x = element.offsetLeft, y = element.offsetTop;
      if (x < right && x + element.offsetWidth > left && y < bottom && y + element.offsetHeight > top) {
        chosen.add(element.dataset.nodeId);
      }
    }
    this.view.setSelection(chosen);
  }

  wheel(event) {
    if (event.target.closest("textarea, select") && !event.ctrlKey) return;  // let text scroll
    event.preventDefault();
    const view = this.graph.view;
    const factor = Math.exp(-event.deltaY * 0.0015);
    const scale = Math.min(MAX_SCALE, Math.max(MIN_SCALE, view.scale * factor));
    const rect = this.view.canvas.getBoundingClientRect();
    const px = event.clientX - rect.left, py = event.clientY - rect.top;
    // Zoom around the pointer: the world point under it stays under it.
    view.x = px - (px - view.x) * (scale / view.scale);
    view.y = py - (py - view.y) * (scale / view.scale);
    view.scale = scale;
    this.view.applyTransform();
    this.graph.changed({ view: true }, { rerender: false, record: false });
  }

  keyDown(event) {
    if (event.target.closest?.("input, textarea, select, [contenteditable]")) return;
    const mod = event.ctrlKey || event.metaKey;
    const key = event.key.toLowerCase();
    if (key === "delete" || key === "backspace") {
      this.hooks.deleteSelected();
    } else if (mod && key === "c") {
      this.hooks.copy();
    } else if (mod && key === "v") {
      this.hooks.paste();
    } else if (mod && key === "z" && !event.shiftKey) {
      this.hooks.undo();
    } else if (mod && (key === "y" || (key === "z" && event.shiftKey))) {
      this.hooks.redo();
    } else if (mod && key === "a") {
      this.view.setSelection([...this.graph.nodes.keys()]);
    } else if (mod && key === "enter") {
      this.hooks.queue(event.shiftKey);
    } else if (mod && key === "b") {
      this.hooks.setMode("bypassed");
    } else if (mod && key === "g") {
      this.hooks.group();
    } else if (mod && key === "m") {
      this.hooks.setMode("muted");
    } else if (event.altKey && key === "c") {
      this.hooks.collapse();
    } else if (!mod && !event.altKey && key === ".") {
      this.view.fitView();
    } else if (!mod && !event.altKey && key === "n") {
      this.hooks.toggleLibrary();
    } else if (!mod && !event.altKey && key === "p") {
      this.hooks.togglePin();
    } else {
      return;
    }
    event.preventDefault();
  }
}
