// Adding nodes: a search box (double-click on the canvas) and a category menu (right-click).

/** Score how well `spec` matches `query` (lower is better; null = no match). */
export function matchScore(spec, query) {
  const q = query.trim().toLowerCase();
  if (!q) return 0;
  const names = [spec.type.toLowerCase(), spec.title.toLowerCase()];
  if (names.some((n) => n === q)) return 0;
  if (names.some((n) => n.startsWith(q))) return 1;
  if (names.some((n) => n.includes(q))) return 2;
  if (spec.category.toLowerCase().includes(q)) return 3;
  const words = q.split(/\s+/);
  const haystack = `${names.join(" ")} ${spec.category} ${spec.description}`.toLowerCase();
  return words.every((w) => haystack.includes(w)) ? 4 : null;
}

export class SearchBox {
  /** `onPick(type, clientX, clientY)` adds the chosen node where the search was opened. */
  constructor(root, graph, onPick) {
    this.root = root;
    this.graph = graph;
    this.onPick = onPick;
    this.input = root.querySelector("#search-input");
    this.list = root.querySelector("#search-results");
    this.active = 0;
    this.input.addEventListener("input", () => { this.active = 0; this.update(); });
    this.input.addEventListener("keydown", (event) => this.key(event));
    // Close when focus leaves for good (a re-open in the meantime keeps it open).
    this.input.addEventListener("blur", () => setTimeout(() => {
      if (document.activeElement !== this.input) this.close();
    }, 150));
  }

  /** Open at the pointer; `filter(spec)`, when given, keeps only the nodes it accepts
   * (a link dropped on the canvas: nodes that can take it). */
  open(clientX, clientY, filter = null) {
    this.at = [clientX, clientY];
    this.filter = filter;
    this.root.hidden = false;
    this.root.style.left = `${clientX}px`;
    this.root.style.top = `${clientY}px`;
    this.input.value = "";
    this.active = 0;
    this.update();
    this.input.focus();
  }

  close() {
    this.root.hidden = true;
  }

  results() {
    const query = this.input.value;
    return Object.values(this.graph.catalogue)
      .filter((spec) => !this.filter || this.filter(spec))
      .map((spec) => ({ spec, score: matchScore(spec, query) }))
      .filter((r) => r.score !== null)
      // ours before the ComfyUI compatibility pack's namesakes, then by title
      .sort((a, b) => a.score - b.score || !!a.spec.compat - !!b.spec.compat || a.spec.title.localeCompare(b.spec.title))
      .slice(0, 30)
      .map((r) => r.spec);
  }

  update() {
    const results = this.results();
    this.current = results;
    this.list.replaceChildren(...results.map((spec, index) => {
      const item = document.createElement("li");
      item.className = "search-item" + (index === this.active ? " active" : "");
      item.dataset.type = spec.type;
      item.innerHTML = `<span class="search-title"></span><span class="search-category"></span>`;
      item.querySelector(".search-title").textContent = spec.title;
      item.querySelector(".search-category").textContent =
        `${spec.compat === "comfyui" ? "ComfyUI · " : ""}${spec.category} · ${spec.type}`;
      item.title = spec.description;
      item.addEventListener("mousedown", (event) => { event.preventDefault(); this.pick(spec.type); });
      return item;
    }));
  }

  key(event) {
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      const count = this.current?.length ?? 0;
      if (count) this.active = (this.active + (event.key === "ArrowDown" ? 1 : count - 1)) % count;
      this.update();
      event.preventDefault();
    } else if (event.key === "Enter") {
      const spec = this.current?.[this.active];
      if (spec) this.pick(spec.type);
      event.preventDefault();
    } else if (event.key === "Escape") {
      this.close();
    }
  }

  pick(type) {
    this.close();
    this.onPick(type, ...this.at);
  }
}

/** A nested menu of categories ("sampling/custom" -> sampling > custom) for right-clicks. */
export class CategoryMenu {
  constructor(root, graph, onPick) {
    this.root = root;
    this.graph = graph;
    this.onPick = onPick;
    document.addEventListener("pointerdown", (event) => {
      if (!root.hidden && !root.contains(event.target)) this.close();
    });
  }

  tree() {
    const root = { children: new Map(), nodes: [] };
    for (const spec of Object.values(this.graph.catalogue)) {
      let branch = root;
      for (const part of spec.category.split("/").filter(Boolean)) {
        if (!branch.children.has(part)) branch.children.set(part, { children: new Map(), nodes: [] });
        branch = branch.children.get(part);
      }
      branch.nodes.push(spec);
    }
    return root;
  }

  open(clientX, clientY) {
    this.at = [clientX, clientY];
    this.root.replaceChildren(this.renderBranch(this.tree(), ""));
    this.root.hidden = false;
    this.root.style.left = `${clientX}px`;
    this.root.style.top = `${clientY}px`;
  }

  renderBranch(branch, path) {
    const list = document.createElement("ul");
    for (const [name, child] of [...branch.children].sort(([a], [b]) => a.localeCompare(b))) {
      const item = document.createElement("li");
      item.className = "menu-category";
      item.dataset.category = path ? `${path}/${name}` : name;
      const label = document.createElement("span");
      label.textContent = name;
      item.append(label, this.renderBranch(child, item.dataset.category));
      list.append(item);
    }
    for (const spec of branch.nodes.sort((a, b) => a.title.localeCompare(b.title))) {
      const item = document.createElement("li");
      item.className = "menu-node";
      item.dataset.type = spec.type;
      item.textContent = spec.title;
      item.title = spec.description;
      item.addEventListener("click", () => { this.close(); this.onPick(spec.type, ...this.at); });
      list.append(item);
    }
    return list;
  }

  close() {
    this.root.hidden = true;
  }
}

/** A flat menu of actions ([{label, run}]) at the pointer, e.g. for a right-clicked node. */
export function showActions(root, clientX, clientY, actions) {
  const list = document.createElement("ul");
  for (const action of actions) {
    const item = document.createElement("li");
    item.className = "menu-action";
    item.dataset.action = action.id;
    item.textContent = action.label;
    item.addEventListener("click", () => { root.hidden = true; action.run(); });
    list.append(item);
  }
  root.replaceChildren(list);
  root.hidden = false;
  root.style.left = `${clientX}px`;
  root.style.top = `${clientY}px`;
}
