// The side panel: queue (with cancel), history (load, delete) and the image gallery; toasts.

import { editorWorkflowOf } from "./modes.js";

export class Toasts {
  constructor(root) {
    this.root = root;
  }

  show(text, kind = "info", ms = 5000) {
    const toast = document.createElement("div");
    toast.className = `toast toast-${kind}`;
    toast.textContent = text;
    this.root.append(toast);
    setTimeout(() => toast.remove(), ms);
    return toast;
  }
}

export class SidePanel {
  /** `onLoad(document)` loads a workflow from history into the editor. */
  constructor(root, api, { onLoad, notify, onImage }) {
    this.root = root;
    this.api = api;
    this.onLoad = onLoad;
    this.onImage = onImage;  // (url, all gallery urls): the lightbox
    this.notify = notify;
    this.queueList = root.querySelector("#queue-list");
    this.historyList = root.querySelector("#history-list");
    this.gallery = root.querySelector("#gallery");
    this.seen = new Set();
    for (const tab of root.querySelectorAll("[data-tab]")) {
      tab.addEventListener("click", () => this.showTab(tab.dataset.tab));
    }
    this.refreshing = null;
    this.stale = false;
  }

  showTab(name) {
    for (const tab of this.root.querySelectorAll("[data-tab]")) tab.classList.toggle("active", tab.dataset.tab === name);
    for (const page of this.root.querySelectorAll("[data-page]")) page.hidden = page.dataset.page !== name;
  }

  /** Re-read queue and history. Coalesced: calls during a refresh cause one more refresh
   * after it (what it read may already be stale), never one per status message. */
  refresh() {
    if (this.refreshing) {
      this.stale = true;
      return this.refreshing;
    }
    this.refreshing = (async () => {
      do {
        this.stale = false;
        try {
          const [queue, history] = await Promise.all([this.api.queue(), this.api.history(30)]);
          this.renderQueue(queue);
          this.renderHistory(history);
        } catch (error) {
          this.notify(`could not read the queue: ${error.message}`, "error");
        }
      } while (this.stale);
      this.refreshing = null;
    })();
    return this.refreshing;
  }

  renderQueue(queue) {
    const rows = [
      ...queue.queue_running.map((entry) => this.queueRow(entry, "running")),
      ...queue.queue_pending.map((entry) => this.queueRow(entry, "pending")),
    ];
    if (!rows.length) rows.push(Object.assign(document.createElement("li"), { className: "empty", textContent: "nothing queued" }));
    this.queueList.replaceChildren(...rows);
    this.root.querySelector('[data-tab="queue"] .count').textContent =
      String(queue.queue_running.length + queue.queue_pending.length);
  }

  queueRow([number, promptId], state) {
    const row = document.createElement("li");
    row.className = `queue-item ${state}`;
    row.dataset.promptId = promptId;
    row.textContent = `#${number} ${state}`;
    const cancel = document.createElement("button");
    cancel.className = "cancel";
    cancel.textContent = state === "running" ? "interrupt" : "cancel";
    cancel.addEventListener("click", async () => {
      try {
        if (state === "running") await this.api.interrupt(promptId);
        else await this.api.deleteFromQueue([promptId]);
      } catch (error) {
        this.notify(error.message, "error");
      }
      this.refresh();
    });
    row.append(cancel);
    return row;
  }

  renderHistory(history) {
    const rows = Object.entries(history).map(([promptId, entry]) => {
      const row = document.createElement("li");
      const status = entry.status.interrupted ? "interrupted" : entry.status.status_str;
      row.className = `history-item ${status}`;
      row.dataset.promptId = promptId;
      const run = entry.latentflow ?? {};  // ComfyUI's "meta" is per node; our run details are here
      const seconds = (run.finished_at ?? 0) - (run.started_at ?? 0);
      row.textContent = `#${run.number ?? "?"} ${status} ${seconds.toFixed(1)}s`;
      const load = document.createElement("button");
      load.textContent = "load";
      load.title = "load this run's workflow into the editor";
      // the editor's whole document when it sent one (muted and bypassed nodes too), else what ran
      load.addEventListener("click", () => this.onLoad(editorWorkflowOf(entry.prompt[3]) ?? entry.prompt[2]));
      const remove = document.createElement("button");
      remove.textContent = "×";
      remove.title = "delete from history";
      remove.addEventListener("click", async () => { await this.api.deleteHistory([promptId]); this.refresh(); });
      row.append(load, remove);
      for (const output of Object.values(entry.outputs)) for (const image of output.images ?? []) this.addImage(image);
      return row;
    });
    this.historyList.replaceChildren(...rows);
  }

  /** Add an output image to the gallery (newest first, once each). */
  addImage(image) {
    const key = `${image.type}/${image.subfolder}/${image.filename}`;
    if (this.seen.has(key)) return;
    this.seen.add(key);
    const link = document.createElement("a");
    link.href = this.api.viewUrl(image);
    link.target = "_blank";
    link.className = "gallery-item";
    link.dataset.filename = image.filename;
    link.append(Object.assign(document.createElement("img"), { src: link.href, alt: image.filename, loading: "lazy" }));
    link.addEventListener("click", (event) => {
      if (!this.onImage || event.ctrlKey || event.metaKey) return;  // Ctrl+click: a new tab
      event.preventDefault();
      this.onImage(link.href, [...this.gallery.querySelectorAll("a")].map((a) => a.href));
    });
    this.gallery.prepend(link);
  }
}
