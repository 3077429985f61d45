// The model library: the files of every model folder (GET /api/models, /api/models/{folder}),
// with a filter. A click adds a loader node for the file in the middle of the view; dragging
// it onto the canvas adds it where it is dropped. The loader is a node whose file choice lists
// that file: ours before the ComfyUI compatibility pack's, loaders before other nodes.

export const MODEL_DRAG_TYPE = "application/x-latentflow-model";

/** The node type and input that load `file`, or null when no node lists it. */
export function loaderFor(catalogue, file) {
  const candidates = [];
  for (const spec of Object.values(catalogue)) {
    for (const input of spec.inputs) {
      if (input.widget?.kind === "combo" && (input.widget.choices ?? []).includes(file)) candidates.push({ spec, input });
    }
  }
  const rank = ({ spec }) => [spec.compat ? 1 : 0, /load/i.test(`${spec.category} ${spec.type}`) ? 0 : 1,
                              spec.inputs.length];
  candidates.sort((a, b) => {
    const [x, y] = [rank(a), rank(b)];
    return x[0] - y[0] || x[1] - y[1] || x[2] - y[2] || a.spec.type.localeCompare(b.spec.type);
  });
  const best = candidates[0];
  return best ? { type: best.spec.type, input: best.input.name } : null;
}

export class ModelLibrary {
  /** `onPick({type, input, file}, clientX | null, clientY | null)` adds the loader (null: mid-view). */
  constructor(root, api, graph, { onPick, notify }) {
    this.root = root;
    this.api = api;
    this.graph = graph;
    this.onPick = onPick;
    this.notify = notify;
    this.folders = [];  // [{name, files}]
    this.search = root.querySelector("#models-search");
    this.tree = root.querySelector("#models-tree");
    this.search.addEventListener("input", () => this.render());
  }

  get open() {
    return !this.root.hidden;
  }

  async toggle(show = !this.open) {
    this.root.hidden = !show;
    if (!show) return;
    this.search.focus();
    await this.refresh();
  }

  /** Re-read the folders (files may have been added since). */
  async refresh() {
    try {
      const kinds = await this.api.request("GET", "/api/models");
      const lists = await Promise.all(kinds.map((kind) => this.api.request("GET", `/api/models/${encodeURIComponent(kind)}`)
        .catch(() => [])));
      this.folders = kinds.map((name, i) => ({ name, files: lists[i] }));
    } catch (error) {
      this.notify(`could not list the models: ${error.message}`, "error");
    }
    this.render();
  }

  render() {
    const query = this.search.value.trim().toLowerCase();
    const folders = this.folders.map(({ name, files }) => ({
      name, files: files.filter((file) => !query || file.toLowerCase().includes(query) || name.includes(query)) }));
    const full = folders.filter((folder) => folder.files.length);
    const empty = folders.filter((folder) => !folder.files.length).map((folder) => folder.name);
    const groups = full.map((folder) => {
      const details = document.createElement("details");
      details.open = true;
      details.dataset.folder = folder.name;
      details.append(Object.assign(document.createElement("summary"), {
        textContent: `${folder.name} (${folder.files.length})` }));
      details.append(...folder.files.map((file) => this.item(folder.name, file)));
      return details;
    });
    if (empty.length && !query) {
      groups.push(Object.assign(document.createElement("p"), { className: "models-empty",
        textContent: `empty: ${empty.join(", ")} (put files in models/<folder>/)` }));
    } else if (!full.length) {
      groups.push(Object.assign(document.createElement("p"), { className: "models-empty", textContent: `no model matches "${query}"` }));
    }
    this.tree.replaceChildren(...groups);
  }

  item(folder, file) {
    const item = document.createElement("div");
    item.className = "model-file";
    item.dataset.file = file;
    item.textContent = file;
    const loader = loaderFor(this.graph.catalogue, file);
    if (!loader) {
      item.classList.add("no-loader");
      item.title = `${folder}/${file}: no node lists this file yet (reload the page after adding files)`;
      return item;
    }
    item.dataset.loader = loader.type;
    item.title = `${folder}/${file}\nclick or drag onto the canvas: ${loader.type} (${loader.input})`;
    item.draggable = true;
    const pick = { ...loader, file };
    item.addEventListener("click", () => this.onPick(pick, null, null));
    item.addEventListener("dragstart", (event) => {
      event.dataTransfer.setData(MODEL_DRAG_TYPE, JSON.stringify(pick));
      event.dataTransfer.effectAllowed = "copy";
    });
    return item;
  }
}
