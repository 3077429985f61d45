// Groups: titled frames behind the nodes (graph.groups, ComfyUI's {title, bounding, color}).
// Ctrl+G frames the selection; dragging a title moves the group with the nodes inside it,
// the corner handle resizes it; right-click on the title renames, recolours, fits or deletes.
// Every change is one undo step.

import { showActions } from "./menus.js";
import { NODE_COLORS } from "./view.js";

const PADDING = 20, TITLE = 34;
const DEFAULT_COLOR = "#3f789e";  // ComfyUI's default group colour

export class GroupLayer {
  constructor(view, notify) {
    this.view = view;
    this.graph = view.graph;
    this.notify = notify;
    this.drag = null;
  }

  /** Draw the groups at the back of the world (called by GraphView.render). */
  render() {
    for (const element of [...this.view.world.querySelectorAll(".group")]) element.remove();
    const elements = this.graph.groups.map((group, index) => this.element(group, index));
    this.view.world.prepend(...elements);
  }

  element(group, index) {
    const [x, y, width, height] = group.bounding;
    const element = document.createElement("div");
    element.className = "group";
    element.dataset.groupIndex = String(index);
    Object.assign(element.style, { left: `${x}px`, top: `${y}px`, width: `${width}px`, height: `${height}px` });
    element.style.setProperty("--group-color", group.color || DEFAULT_COLOR);
    const title = Object.assign(document.createElement("div"), { className: "group-title", textContent: group.title || "Group",
                                                                 title: "drag to move the group and its nodes; right-click for more" });
    const handle = Object.assign(document.createElement("div"), { className: "group-resize", title: "drag to resize" });
    title.addEventListener("pointerdown", (event) => this.start(event, index, "move"));
    handle.addEventListener("pointerdown", (event) => this.start(event, index, "resize"));
    for (const part of [title, handle]) {
      part.addEventListener("pointermove", (event) => this.move(event));
      part.addEventListener("pointerup", () => this.end());
      part.addEventListener("dblclick", (event) => event.stopPropagation());
    }
    title.addEventListener("contextmenu", (event) => {
      event.preventDefault();
      event.stopPropagation();
      this.menu(index, event.clientX, event.clientY);
    });
    element.append(title, handle);
    return element;
  }

  /** Ids of the nodes whose boxes lie inside `bounding`. */
  nodesInside([x, y, width, height]) {
    return [...this.view.world.querySelectorAll(".node")].filter((e) => e.offsetLeft >= x && e.offsetTop >= y &&
      e.offsetLeft + e.offsetWidth <= x + width && e.offsetTop + e.offsetHeight <= y + height).map((e) => e.dataset.nodeId);
  }

  /** The bounding box that frames `ids` (with room for the title). */
  frame(ids) {
    const elements = ids.map((id) => this.view.world.querySelector(`.node[data-node-id="${CSS.escape(id)}"]`)).filter(Boolean);
    if (!elements.length) return null;
    const left = Math.min(...elements.map((e) => e.offsetLeft)) - PADDING;
    const top = Math.min(...elements.map((e) => e.offsetTop)) - PADDING - TITLE;
    const right = Math.max(...elements.map((e) => e.offsetLeft + e.offsetWidth)) + PADDING;
    const bottom = Math.max(...elements.map((e) => e.offsetTop + e.offsetHeight)) + PADDING;
    return [left, top, right - left, bottom - top].map(Math.round);
  }

  /** Frame the selected nodes in a new group. */
  groupSelection(ids) {
    const bounding = this.frame(ids);
    if (!bounding) {
      this.notify("select the nodes to group first (Ctrl+G frames the selection)");
      return;
    }
    this.graph.groups.push({ title: "Group", bounding, color: DEFAULT_COLOR, font_size: 24 });
    this.graph.changed({ groups: true });
  }

  start(event, index, kind) {
    if (event.button !== 0) return;
    event.stopPropagation();
    event.preventDefault();
    event.currentTarget.setPointerCapture(event.pointerId);
    const group = this.graph.groups[index];
    const ids = kind === "move" ? this.nodesInside(group.bounding).filter((id) => !this.graph.nodes.get(id)?.ui.pinned) : [];
    this.drag = { group, kind, ids, last: this.view.toWorld(event.clientX, event.clientY), moved: false };
  }

  move(event) {
    const drag = this.drag;
    if (!drag) return;
    const point = this.view.toWorld(event.clientX, event.clientY);
    const dx = point[0] - drag.last[0], dy = point[1] - drag.last[1];
    drag.last = point;
    drag.moved = true;
    const b = drag.group.bounding;
    if (drag.kind === "move") {
      drag.group.bounding = [b[0] + dx, b[1] + dy, b[2], b[3]];
      if (drag.ids.length) {
        this.graph.move(drag.ids, dx, dy, false);
        this.view.moveNodeElements(drag.ids);
      }
    } else {
      drag.group.bounding = [b[0], b[1], Math.max(140, b[2] + dx), Math.max(80, b[3] + dy)];
    }
    const element = this.view.world.querySelector(`.group[data-group-index="${this.graph.groups.indexOf(drag.group)}"]`);
    if (element) {
      const [x, y, width, height] = drag.group.bounding;
      Object.assign(element.style, { left: `${x}px`, top: `${y}px`, width: `${width}px`, height: `${height}px` });
    }
  }

  end() {
    const drag = this.drag;
    this.drag = null;
    if (!drag?.moved) return;
    drag.group.bounding = drag.group.bounding.map(Math.round);
    for (const id of drag.ids) {
      const node = this.graph.nodes.get(id);
      if (node) node.ui.pos = node.ui.pos.map(Math.round);
    }
    this.graph.changed({ groups: true, moved: drag.ids });  // one undo step for the whole drag
  }

  menu(index, clientX, clientY) {
    const group = this.graph.groups[index];
    const changed = () => this.graph.changed({ groups: true });
    showActions(document.querySelector("#menu"), clientX, clientY, [
      { id: "group-rename", label: "Rename…", run: () => {
        const title = prompt("group title", group.title || "Group");
        if (title !== null) { group.title = title.trim() || "Group"; changed(); }
      } },
      { id: "group-fit", label: "Fit to its nodes", run: () => {
        const bounding = this.frame(this.nodesInside(group.bounding));
        if (bounding) { group.bounding = bounding; changed(); }
      } },
      ...Object.entries(NODE_COLORS).map(([name, color]) => ({ id: `group-color-${name}`, label: `colour: ${name.replace("_", " ")}`,
                                                                run: () => { group.color = color; changed(); } })),
      { id: "group-delete", label: "Delete the group (keep its nodes)", run: () => {
        this.graph.groups.splice(index, 1);
        changed();
      } },
    ]);
  }
}
