// The node library: every node by category, with a filter; ComfyUI's names (the compatibility
// pack, `"compat": "comfyui"` in /object_info) are listed apart under "ComfyUI". A click adds
// the node in the middle of the view; dragging it onto the canvas adds it where it is dropped.

import { matchScore } from "./menus.js";

const GROUPS = [["latentflow", (spec) => !spec.compat], ["ComfyUI", (spec) => spec.compat === "comfyui"],
                ["other compatibility nodes", (spec) => spec.compat && spec.compat !== "comfyui"]];

export class NodeLibrary {
  /** `onPick(type, clientX | null, clientY | null)` adds a node (null: the view's centre). */
  constructor(root, graph, onPick) {
    this.root = root;
    this.graph = graph;
    this.onPick = onPick;
    this.search = root.querySelector("#library-search");
    this.tree = root.querySelector("#library-tree");
    this.search.addEventListener("input", () => this.render());
    this.search.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        const first = this.tree.querySelector(".library-node");
        if (first) this.onPick(first.dataset.type, null, null);
      } else if (event.key === "Escape") {
        this.search.value = "";
        this.render();
      }
    });
  }

  get open() {
    return !this.root.hidden;
  }

  toggle(show = !this.open) {
    this.root.hidden = !show;
    if (show) {
      this.render();
      this.search.focus();
    }
  }

  render() {
    const query = this.search.value;
    const specs = Object.values(this.graph.catalogue).filter((spec) => matchScore(spec, query) !== null);
    const groups = [];
    for (const [label, belongs] of GROUPS) {
      const members = specs.filter(belongs);
      if (!members.length) continue;
      const group = this.branch(label, members, !!query || label === "latentflow");
      group.classList.add("library-group");
      group.dataset.group = label;
      groups.push(group);
    }
    if (!groups.length) groups.push(Object.assign(document.createElement("div"), {
      className: "library-empty", textContent: `no node matches "${query}"` }));
    this.tree.replaceChildren(...groups);
  }

  /** A <details> of `specs` by category path ("sampling/custom" -> sampling > custom). */
  branch(label, specs, open) {
    const details = document.createElement("details");
    details.open = open;
    details.append(Object.assign(document.createElement("summary"), { textContent: `${label} (${specs.length})` }));
    const byCategory = new Map();
    for (const spec of specs) {
      const [head, ...rest] = spec.category.split("/").filter(Boolean);
      const key = head ?? "misc";
      if (!byCategory.has(key)) byCategory.set(key, { direct: [], nested: [] });
      const entry = byCategory.get(key);
      if (rest.length) entry.nested.push({ ...spec, category: rest.join("/") });
      else entry.direct.push(spec);
    }
    for (const [category, { direct, nested }] of [...byCategory].sort(([a], [b]) => a.localeCompare(b))) {
      const sub = document.createElement("details");
      sub.open = open && !!this.search.value;
      sub.dataset.category = category;
      sub.append(Object.assign(document.createElement("summary"), { textContent: category }));
      if (nested.length) sub.append(...this.branch("", nested, sub.open).children);
      for (const spec of direct.sort((a, b) => a.title.localeCompare(b.title))) sub.append(this.item(spec));
      details.append(sub);
    }
    return details;
  }

  item(spec) {
    const item = document.createElement("div");
    item.className = "library-node";
    item.dataset.type = spec.type;
    item.textContent = spec.title;
    item.title = `${spec.type}\n${spec.description}`;
    item.draggable = true;
    item.addEventListener("click", () => this.onPick(spec.type, null, null));
    item.addEventListener("dragstart", (event) => {
      event.dataTransfer.setData("application/x-latentflow-node", spec.type);
      event.dataTransfer.effectAllowed = "copy";
    });
    return item;
  }
}
