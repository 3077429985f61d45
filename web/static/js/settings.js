// Editor settings (kept in localStorage) and the panel that edits them, with the keyboard
// shortcuts listed beside. Who uses a setting reads it with settings.get(name) when it acts
// and listens to "change" to redraw.

const SETTINGS_KEY = "latentflow.settings";

export const GRID = 24;  // px between the canvas's dots; "snap to grid" rounds positions to it

/** name -> {label, kind ("toggle" | "choice"), default, choices?, help} */
export const SETTINGS = {
  previews: { label: "Live previews", kind: "toggle", default: true,
              help: "show the sampler's preview images on the running node" },
  snapToGrid: { label: "Snap to grid", kind: "toggle", default: false,
                help: `moved nodes land on the ${GRID} px grid` },
  linkStyle: { label: "Link style", kind: "choice", default: "spline", choices: ["spline", "straight", "orthogonal"],
               help: "how links are drawn" },
  minimap: { label: "Minimap", kind: "toggle", default: true, help: "a map of the whole workflow, bottom right" },
};

const SHORTCUTS = [
  ["Ctrl+Enter", "queue"], ["Ctrl+Shift+Enter", "queue at the front"], ["Ctrl+Z / Ctrl+Y", "undo / redo"],
  ["Ctrl+C / Ctrl+V", "copy / paste"], ["Delete", "delete the selection"], ["Ctrl+A", "select all"],
  ["Ctrl+B", "bypass"], ["Ctrl+G", "group the selection"], ["Ctrl+M", "mute"], ["Alt+C", "collapse"], ["P", "pin / unpin"], [".", "fit the view"],
  ["N", "node library"], ["double-click", "search nodes"], ["right-click", "add menu / node menu"],
  ["Shift+drag", "select a box"], ["wheel", "zoom"],
];

export class Settings extends EventTarget {
  constructor(storage = localStorage) {
    super();
    this.storage = storage;
    let saved = {};
    try { saved = JSON.parse(storage.getItem(SETTINGS_KEY) || "{}") ?? {}; } catch { /* damaged: defaults */ }
    this.values = {};
    for (const [name, spec] of Object.entries(SETTINGS)) {
      const value = saved[name];
      const valid = spec.kind === "toggle" ? typeof value === "boolean" : spec.choices.includes(value);
      this.values[name] = valid ? value : spec.default;
    }
  }

  get(name) {
    return this.values[name];
  }

  set(name, value) {
    if (!(name in SETTINGS) || this.values[name] === value) return;
    this.values[name] = value;
    this.storage.setItem(SETTINGS_KEY, JSON.stringify(this.values));
    this.dispatchEvent(new CustomEvent("change", { detail: { name, value } }));
  }
}

/** The settings popup: one control per setting (applied at once) and the shortcut list. */
export class SettingsPanel {
  constructor(root, settings) {
    this.root = root;
    this.settings = settings;
    root.addEventListener("keydown", (event) => { if (event.key === "Escape") this.toggle(false); });
  }

  toggle(show = this.root.hidden) {
    this.root.hidden = !show;
    if (show) this.render();
  }

  render() {
    const heading = Object.assign(document.createElement("h3"), { textContent: "Settings" });
    const close = Object.assign(document.createElement("button"), { className: "close", textContent: "×", title: "close" });
    close.addEventListener("click", () => this.toggle(false));
    const rows = Object.entries(SETTINGS).map(([name, spec]) => this.row(name, spec));
    const keys = Object.assign(document.createElement("h3"), { textContent: "Keyboard and mouse" });
    const table = document.createElement("table");
    table.className = "shortcuts";
    for (const [key, action] of SHORTCUTS) {
      const tr = table.insertRow();
      tr.insertCell().append(Object.assign(document.createElement("kbd"), { textContent: key }));
      tr.insertCell().textContent = action;
    }
    this.root.replaceChildren(close, heading, ...rows, keys, table);
  }

  row(name, spec) {
    const label = document.createElement("label");
    label.className = "setting";
    label.dataset.setting = name;
    label.title = spec.help;
    let control;
    if (spec.kind === "toggle") {
      control = Object.assign(document.createElement("input"), { type: "checkbox", checked: this.settings.get(name) });
      control.addEventListener("change", () => this.settings.set(name, control.checked));
    } else {
      control = document.createElement("select");
      control.append(...spec.choices.map((choice) => new Option(choice, choice)));
      control.value = this.settings.get(name);
      control.addEventListener("change", () => this.settings.set(name, control.value));
    }
    label.append(Object.assign(document.createElement("span"), { textContent: spec.label }), control);
    return label;
  }
}
