// The editor's files: open (JSON, ComfyUI UI graphs, PNGs), save (ours, ComfyUI's format, on
// the server) and the server's workflow list. A base class of the Editor in main.js: the
// methods use its api, graph, view, toasts, load() and notify().

import { describeProblem, downloadJson, isUiGraph, problemsByNode } from "./comfyui.js";
import { workflowFromPng } from "./png.js";

export class EditorFiles {

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

  /** The workflow a saved image (its /api/view url) carries, opened in the editor. */
  async openImageWorkflow(url) {
    try {
      const response = await fetch(url, { headers: this.api.headers() });
      if (!response.ok) throw new Error(`status ${response.status}`);
      const doc = await workflowFromPng(await response.arrayBuffer());
      const name = new URLSearchParams(url.split("?")[1] ?? "").get("filename") ?? "the image";
      if (isUiGraph(doc)) await this.loadComfyGraph(doc, name);
      else this.load(doc, name);
    } catch (error) {
      this.notify(`could not read the image's workflow: ${error.message}`, "error");
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
      // the whole document: modes, flags, colours and reroutes go out as ComfyUI's
      const doc = this.graph.toDocument();
      const { workflow, problems } = await this.api.convert("comfyui", doc);
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
}
