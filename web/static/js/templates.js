// Templates: the workflows shipped in workflows/ (GET /api/workflows, source "shipped"), each
// shown with its title and description; a click opens it in a new tab.

export class TemplateMenu {
  /** `onOpen(doc, name)` opens a template's document. */
  constructor(root, api, { onOpen, notify }) {
    this.root = root;
    this.api = api;
    this.onOpen = onOpen;
    this.notify = notify;
    this.documents = new Map();  // name -> document (read once per page)
    root.addEventListener("keydown", (event) => { if (event.key === "Escape") this.toggle(false); });
  }

  async toggle(show = this.root.hidden) {
    this.root.hidden = !show;
    if (show) await this.render();
  }

  async document(name) {
    if (!this.documents.has(name)) this.documents.set(name, await this.api.workflow(name));
    return this.documents.get(name);
  }

  async render() {
    const heading = Object.assign(document.createElement("h3"), { textContent: "Templates" });
    const close = Object.assign(document.createElement("button"), { className: "close", textContent: "×", title: "close" });
    close.addEventListener("click", () => this.toggle(false));
    const list = document.createElement("ul");
    list.className = "template-list";
    this.root.replaceChildren(close, heading, list);
    try {
      const { workflows } = await this.api.workflows();
      const shipped = workflows.filter((w) => w.source === "shipped");
      const documents = await Promise.all(shipped.map((w) => this.document(w.name).catch(() => null)));
      list.replaceChildren(...shipped.map((entry, i) => this.item(entry, documents[i])));
      if (!shipped.length) list.append(Object.assign(document.createElement("li"), { textContent: "no shipped workflows" }));
    } catch (error) {
      this.notify(`could not list the templates: ${error.message}`, "error");
    }
  }

  item(entry, doc) {
    const item = document.createElement("li");
    item.className = "template";
    item.dataset.template = entry.name;
    item.tabIndex = 0;
    const nodes = Object.keys(doc?.nodes ?? {}).length;
    item.append(Object.assign(document.createElement("strong"), { textContent: entry.title }),
                Object.assign(document.createElement("span"), { className: "template-size",
                                                                textContent: doc ? `${nodes} nodes` : "unreadable" }),
                Object.assign(document.createElement("p"), { textContent: doc?.meta?.description ?? "" }));
    const open = async () => {
      try {
        const template = await this.document(entry.name);
        this.toggle(false);
        this.onOpen(JSON.parse(JSON.stringify(template)), entry.name);
      } catch (error) {
        this.notify(`could not open ${entry.name}: ${error.message}`, "error");
      }
    };
    item.addEventListener("click", open);
    item.addEventListener("keydown", (event) => { if (event.key === "Enter") open(); });
    return item;
  }
}
