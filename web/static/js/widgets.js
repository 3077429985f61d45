// Widgets built from input specs: numbers with limits, text, multiline, combo, toggle, seed.

function clamp(value, widget) {
  if (widget.min !== undefined && value < widget.min) return widget.min;
  if (widget.max !== undefined && value > widget.max) return widget.max;
  return value;
}

/**
 * Parse and clamp what was typed; returns null when it is not a number at all. Integers
 * are also kept within +-2^53 - 1: beyond that a JS number is not exact (a typed
 * 2^64 - 1 seed would become 2^64 and be sent as a different, out-of-range seed).
 */
export function parseNumber(text, widget) {
  const value = Number(text);
  if (text.trim() === "" || !Number.isFinite(value)) return null;
  if (widget.kind !== "int" && widget.kind !== "seed") return clamp(value, widget);
  const exact = Math.max(-Number.MAX_SAFE_INTEGER, Math.min(Number.MAX_SAFE_INTEGER, Math.round(value)));
  return clamp(exact, widget);
}

/** A random seed within the widget's limits (capped to 2^32 so it stays exact in JS). */
export function randomSeed(widget) {
  const low = widget.min ?? 0;
  const high = Math.min(widget.max ?? 2 ** 32 - 1, Number.MAX_SAFE_INTEGER, 2 ** 32 - 1);
  return low + Math.floor(Math.random() * (high - low + 1));
}

/**
 * Build the DOM for one widget. `onChange(value)` fires with a valid value;
 * `onControl(mode)` fires when a seed's "after queue" mode changes; `upload(file)`, when
 * given, adds an upload button to a combo (image choices) and selects the uploaded file.
 */
export function createWidget(input, value, { onChange, onControl, control, upload }) {
  const widget = input.widget;
  const row = document.createElement("label");
  row.className = `widget widget-${widget.kind}`;
  row.dataset.widget = input.name;
  row.title = widget.tooltip || "";
  const caption = document.createElement("span");
  caption.className = "widget-name";
  caption.textContent = input.name;
  row.append(caption);

  if (widget.kind === "int" || widget.kind === "float" || widget.kind === "seed") {
    const field = document.createElement("input");
    field.type = "number";
    field.value = value ?? "";
    if (widget.min !== undefined) field.min = widget.min;
    if (widget.max !== undefined) field.max = widget.max;
    field.step = widget.step ?? (widget.kind === "float" ? 0.01 : 1);
    field.addEventListener("change", () => {
      const parsed = parseNumber(field.value, widget);
      if (parsed === null) {
        field.value = value ?? "";
        row.classList.add("widget-invalid");
        return;
      }
      row.classList.remove("widget-invalid");
      field.value = parsed;
      value = parsed;
      onChange(parsed);
    });
    row.append(field);
    if (widget.kind === "seed") {
      const mode = document.createElement("select");
      mode.className = "seed-control";
      mode.title = "what happens to the seed after each queue";
      for (const [key, label] of [["randomize", "randomize after queue"], ["fixed", "fixed"], ["increment", "increment after queue"]]) {
        mode.append(new Option(label, key, false, key === (control || "randomize")));
      }
      mode.addEventListener("change", () => onControl?.(mode.value));
      row.append(mode);
    }
  } else if (widget.kind === "text") {
    const field = widget.multiline ? document.createElement("textarea") : document.createElement("input");
    if (!widget.multiline) field.type = "text";
    field.value = value ?? "";
    field.spellcheck = false;
    field.addEventListener("input", () => onChange(field.value));
    row.append(field);
  } else if (widget.kind === "combo") {
    const field = document.createElement("select");
    const choices = widget.choices ?? [];
    for (const choice of choices) field.append(new Option(choice, choice, false, choice === value));
    if (value !== undefined && !choices.includes(value)) {
      field.append(new Option(`${value} (missing)`, value, false, true));  // keep what the file said
      row.classList.add("widget-invalid");
    }
    field.addEventListener("change", () => { row.classList.remove("widget-invalid"); onChange(field.value); });
    row.append(field);
    if (upload) row.append(uploadButton(field, upload, onChange));
  } else if (widget.kind === "toggle") {
    const field = document.createElement("input");
    field.type = "checkbox";
    field.checked = !!value;
    field.addEventListener("change", () => onChange(field.checked));
    row.append(field);
  }
  // Widgets must not start node drags or canvas pans.
  row.addEventListener("pointerdown", (event) => { if (!event.target.closest(".socket")) event.stopPropagation(); });
  row.addEventListener("dblclick", (event) => event.stopPropagation());
  return row;
}

function uploadButton(select, upload, onChange) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "upload-button";
  button.textContent = "upload…";
  const picker = Object.assign(document.createElement("input"), { type: "file", accept: "image/png,image/jpeg,image/webp", hidden: true });
  button.addEventListener("click", (event) => { event.preventDefault(); picker.click(); });
  picker.addEventListener("change", async () => {
    const [file] = picker.files;
    if (!file) return;
    const result = await upload(file);
    if (!result) return;
    const name = result.subfolder ? `${result.subfolder}/${result.name}` : result.name;
    if (![...select.options].some((o) => o.value === name)) select.append(new Option(name, name));
    select.value = name;
    onChange(name);
  });
  const wrap = document.createElement("span");
  wrap.className = "upload";
  wrap.append(button, picker);
  return wrap;
}

/**
 * Apply each seed's "after queue" mode to a graph (call after a successful queue). A seed
 * without a saved mode (a shipped or ComfyUI workflow) does what its widget shows: randomize.
 */
export function advanceSeeds(graph) {
  for (const node of graph.nodes.values()) {
    const controls = node.ui.controls ?? {};
    const spec = graph.spec(node.type);
    const seeds = (spec?.inputs ?? []).filter((i) => i.widget?.kind === "seed").map((i) => i.name);
    for (const name of new Set([...seeds, ...Object.keys(controls)])) {
      const mode = controls[name] ?? "randomize";
      const input = spec?.inputs.find((i) => i.name === name);
      if (!input?.widget || typeof node.inputs[name] !== "number") continue;
      if (mode === "randomize") graph.setValue(node.id, name, randomSeed(input.widget));
      else if (mode === "increment") graph.setValue(node.id, name, clamp(node.inputs[name] + 1, input.widget));
    }
  }
}
