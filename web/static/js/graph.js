// The editor's workflow model: exactly our JSON format
// ({"version": 1, "nodes": {id: {type, inputs, ui: {pos: [x, y]}}}}), plus the catalogue
// that says which inputs are sockets and which are widgets.

/** Does an output of type `from` fit an input of type `to`? (mirrors engine/validation.py) */
export function typesCompatible(from, to, toIsWidget = false) {
  if (from === to || from === "*" || to === "*") return true;
  if (toIsWidget && to === "COMBO" && (from === "STRING" || from === "COMBO")) return true;
  const a = new Set(String(from).split(","));
  return String(to).split(",").some((t) => a.has(t));
}

/** Normalise one /object_info entry into {inputs: [...], outputs: [...]} for the editor. */
export function describeNode(info) {
  const inputs = [];
  for (const group of ["required", "optional"]) {
    const entries = info.input?.[group] ?? {};
    const order = info.input_order?.[group] ?? Object.keys(entries);
    for (const name of order) {
      const [kind, options = {}] = entries[name];
      inputs.push(describeInput(name, kind, options, group === "optional"));
    }
  }
  const outputs = (info.output ?? []).map((type, i) => ({ name: info.output_name?.[i] ?? type.toLowerCase(), type }));
  return { type: info.name, title: info.display_name || info.name, category: info.category || "misc",
           description: info.description || "", outputNode: !!info.output_node, compat: info.compat || null,
           inputs, outputs };
}

function describeInput(name, kind, options, optional) {
  if (Array.isArray(kind)) {
    return { name, type: "COMBO", optional, widget: { kind: "combo", choices: kind, ...options } };
  }
  const widgetKinds = { INT: "int", FLOAT: "float", STRING: "text", BOOLEAN: "toggle" };
  const widgetKind = widgetKinds[kind];
  // Widgets always carry options (default, step, multiline...); a bare ["INT", {}] is a socket.
  // "forceInput" is ComfyUI's mark of a socket-only INT/FLOAT/STRING (our registry sets it too).
  if (widgetKind && !options.forceInput && Object.keys(options).some((k) => k !== "tooltip")) {
    const widget = { kind: widgetKind, ...options };
    if (widgetKind === "int" && options.control_after_generate) widget.kind = "seed";
    return { name, type: kind, optional, widget };
  }
  return { name, type: kind, optional, widget: null, tooltip: options.tooltip || "" };
}

/** Reroute: a dot that passes one link on (ComfyUI's frontend-only node of that name). The
 * editor adds it to the catalogue when the server has none and resolves it before queueing
 * (modes.js), so the server never sees it. */
export const REROUTE_SPEC = Object.freeze({
  type: "Reroute", title: "Reroute", category: "utils", editorOnly: true, outputNode: false, compat: null,
  description: "Passes its input on unchanged, to route links tidily (resolved by the editor before queueing).",
  inputs: [{ name: "input", type: "*", optional: false, widget: null, tooltip: "" }],
  outputs: [{ name: "output", type: "*" }],
});

export function isLink(value) {
  return Array.isArray(value) && value.length === 2 &&
    (typeof value[0] === "string" || typeof value[0] === "number") &&
    (typeof value[1] === "string" || typeof value[1] === "number");
}

function clone(value) {
  return value === undefined ? undefined : JSON.parse(JSON.stringify(value));
}

export class Graph extends EventTarget {
  constructor(catalogue = {}) {
    super();
    this.catalogue = {};  // type -> describeNode(info)
    this.setCatalogue(catalogue);
    this.nodes = new Map();  // id -> {id, type, inputs, ui}
    this.meta = {};
    this.view = { x: 0, y: 0, scale: 1 };
    // Groups as ComfyUI's UI format has them ({title, bounding: [x, y, w, h], color}), kept
    // where engine/comfyui_graph*.py keeps them (ui.comfyui.groups): they round-trip.
    this.groups = [];
    this.uiExtra = {};  // the rest of the document's `ui`, kept as it came
  }

  setCatalogue(objectInfo) {
    this.catalogue = Object.fromEntries(Object.entries(objectInfo).map(([type, info]) => [type, describeNode(info)]));
    if (!this.catalogue.Reroute) this.catalogue.Reroute = REROUTE_SPEC;
  }

  spec(type) {
    return this.catalogue[type] ?? null;
  }

  nextId() {
    let max = 0;
    for (const id of this.nodes.keys()) if (/^\d+$/.test(id)) max = Math.max(max, Number(id));
    return String(max + 1);
  }

  /** Add a node of `type` with its widgets' defaults (`overrides` replace some); returns the new id. */
  addNode(type, pos = [0, 0], inputs = null, ui = {}, overrides = null) {
    const spec = this.spec(type);
    if (!spec) throw new Error(`unknown node type ${type}`);
    const id = this.nextId();
    const values = {};
    for (const input of spec.inputs) {
      if (!input.widget) continue;
      let value = input.widget.default;
      if (value === undefined) value = defaultFor(input.widget);
      if (value !== undefined) values[input.name] = value;
    }
    const controls = {};
    for (const input of spec.inputs) if (input.widget?.kind === "seed") controls[input.name] = "randomize";
    const nodeUi = { ...clone(ui), pos: [Math.round(pos[0]), Math.round(pos[1])] };
    if (Object.keys(controls).length && !nodeUi.controls) nodeUi.controls = controls;
    this.nodes.set(id, { id, type, inputs: inputs ? clone(inputs) : { ...values, ...clone(overrides) }, ui: nodeUi });
    this.changed({ added: [id] });
    return id;
  }

  removeNodes(ids) {
    const gone = new Set(ids);
    for (const id of gone) this.nodes.delete(id);
    for (const node of this.nodes.values()) {
      for (const [name, value] of Object.entries(node.inputs)) {
        if (isLink(value) && gone.has(String(value[0]))) this.unlinkInput(node, name);
      }
    }
    this.changed({ removed: [...gone] });
  }

  /** Restore a widget's value (or drop the input) after its link was removed. */
  unlinkInput(node, name) {
    const input = this.spec(node.type)?.inputs.find((i) => i.name === name);
    if (input?.widget) node.inputs[name] = input.widget.default ?? defaultFor(input.widget);
    else delete node.inputs[name];
  }

  /** Why `from.output` cannot feed `to.input`, or null when it can. */
  linkProblem(fromId, outputName, toId, inputName) {
    const from = this.nodes.get(fromId), to = this.nodes.get(toId);
    if (!from || !to) return "no such node";
    if (fromId === toId) return "a node cannot feed itself";
    const output = this.spec(from.type)?.outputs.find((o) => o.name === outputName);
    const input = this.spec(to.type)?.inputs.find((i) => i.name === inputName);
    if (!output || !input) return "no such socket";
    if (!typesCompatible(output.type, input.type, !!input.widget)) {
      return `${input.name} expects ${input.type}, not ${output.type}`;
    }
    if (this.reaches(toId, fromId)) return "that link would make a cycle";
    return null;
  }

  /** Is `target` downstream of `start`? */
  reaches(start, target) {
    const stack = [start], seen = new Set();
    while (stack.length) {
      const id = stack.pop();
      if (id === target) return true;
      if (seen.has(id)) continue;
      seen.add(id);
      for (const node of this.nodes.values()) {
        if (Object.values(node.inputs).some((v) => isLink(v) && String(v[0]) === id)) stack.push(node.id);
      }
    }
    return false;
  }

  connect(fromId, outputName, toId, inputName) {
    const problem = this.linkProblem(fromId, outputName, toId, inputName);
    if (problem) return problem;
    this.nodes.get(toId).inputs[inputName] = [fromId, outputName];
    this.changed({ linked: [toId] });
    return null;
  }

  disconnect(toId, inputName) {
    const node = this.nodes.get(toId);
    if (!node || !isLink(node.inputs[inputName])) return;
    this.unlinkInput(node, inputName);
    this.changed({ unlinked: [toId] });
  }

  setValue(id, name, value) {
    const node = this.nodes.get(id);
    if (!node || node.inputs[name] === value) return;
    node.inputs[name] = value;
    this.changed({ value: [id], input: name }, { rerender: false });
  }

  /** Move nodes; positions are rounded when the move is recorded (the end of a drag). */
  move(ids, dx, dy, record = true) {
    const round = record ? Math.round : (v) => v;
    for (const id of ids) {
      const node = this.nodes.get(id);
      if (node) node.ui.pos = [round(node.ui.pos[0] + dx), round(node.ui.pos[1] + dy)];
    }
    this.changed({ moved: ids }, { rerender: false, record });
  }

  /** Links as {from, output, to, input} records (for drawing). */
  links() {
    const out = [];
    for (const node of this.nodes.values()) {
      for (const [name, value] of Object.entries(node.inputs)) {
        if (isLink(value) && this.nodes.has(String(value[0]))) {
          out.push({ from: String(value[0]), output: this.outputName(String(value[0]), value[1]), to: node.id, input: name });
        }
      }
    }
    return out;
  }

  /** Links may name outputs by index (ComfyUI style); the editor works with names. */
  outputName(nodeId, ref) {
    if (typeof ref === "string" && !/^\d+$/.test(ref)) return ref;
    const spec = this.spec(this.nodes.get(nodeId)?.type);
    return spec?.outputs[Number(ref)]?.name ?? String(ref);
  }

  toDocument() {
    const nodes = {};
    for (const node of this.nodes.values()) {
      nodes[node.id] = { type: node.type, inputs: clone(node.inputs), ui: clone(node.ui) };
    }
    const ui = { ...clone(this.uiExtra), view: { ...this.view } };
    if (this.groups.length) ui.comfyui = { ...(ui.comfyui ?? {}), groups: clone(this.groups) };
    const doc = { version: 1, nodes, ui };
    if (Object.keys(this.meta).length) doc.meta = clone(this.meta);
    return doc;
  }

  /** Replace everything with `doc` (our format); ComfyUI API prompts are converted. */
  loadDocument(doc, { record = true } = {}) {
    const document = toOurFormat(doc);
    this.nodes = new Map();
    let column = 0;
    for (const [id, entry] of Object.entries(document.nodes ?? {})) {
      const ui = clone(entry.ui ?? {});
      if (!Array.isArray(ui.pos)) ui.pos = [40 + 300 * (column % 5), 40 + 260 * Math.floor(column / 5)];
      column += 1;
      const inputs = {};
      for (const [name, value] of Object.entries(entry.inputs ?? {})) {
        inputs[name] = isLink(value) ? [String(value[0]), this.outputNameFor(document, String(value[0]), value[1])] : clone(value);
      }
      this.nodes.set(String(id), { id: String(id), type: entry.type, inputs, ui });
    }
    this.meta = clone(document.meta ?? {});
    const { view: _, ...uiExtra } = clone(document.ui ?? {});
    this.groups = (uiExtra.comfyui?.groups ?? []).filter(isGroup);
    if (uiExtra.comfyui) {
      delete uiExtra.comfyui.groups;
      if (!Object.keys(uiExtra.comfyui).length) delete uiExtra.comfyui;
    }
    this.uiExtra = uiExtra;
    const view = document.ui?.view;
    this.view = view && Number.isFinite(view.scale) ? { x: view.x, y: view.y, scale: view.scale } : { x: 0, y: 0, scale: 1 };
    this.changed({ loaded: true }, { record });
  }

  outputNameFor(document, sourceId, ref) {
    if (typeof ref === "string" && !/^\d+$/.test(ref)) return ref;
    const spec = this.spec(document.nodes?.[sourceId]?.type);
    return spec?.outputs[Number(ref)]?.name ?? ref;
  }

  changed(detail, { rerender = true, record = true } = {}) {
    this.dispatchEvent(new CustomEvent("change", { detail: { ...detail, rerender, record } }));
  }
}

/** A group as ComfyUI writes it: a title and a finite [x, y, width, height]. */
export function isGroup(group) {
  return !!group && typeof group === "object" && Array.isArray(group.bounding) && group.bounding.length === 4 &&
    group.bounding.every(Number.isFinite);
}

export function defaultFor(widget) {
  switch (widget.kind) {
    case "int": case "seed": return Math.max(widget.min ?? 0, Math.min(0, widget.max ?? 0));
    case "float": return Math.max(widget.min ?? 0, Math.min(0, widget.max ?? 0));
    case "text": return "";
    case "toggle": return false;
    case "combo": return widget.choices?.[0];
    default: return undefined;
  }
}

/** ComfyUI's API prompt ({id: {class_type, inputs}}) -> our document. */
export function toOurFormat(doc) {
  if (doc && typeof doc === "object" && !doc.nodes) {
    const values = Object.values(doc);
    if (values.length && values.every((v) => v && typeof v === "object" && "class_type" in v)) {
      const nodes = {};
      for (const [id, entry] of Object.entries(doc)) {
        nodes[id] = { type: entry.class_type, inputs: entry.inputs ?? {}, ui: entry._meta?.title ? { title: entry._meta.title } : {} };
      }
      return { version: 1, nodes };
    }
  }
  return doc ?? { version: 1, nodes: {} };
}
