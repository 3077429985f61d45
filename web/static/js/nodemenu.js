// The right-click menu of a node: rename, bypass, mute, collapse, pin, colour, duplicate, delete.

import { showActions } from "./menus.js";
import { nodeMode, toggleMode } from "./modes.js";
import { NODE_COLORS } from "./view.js";

/** Show the menu of node `id` (and the rest of the selection) for `editor` at the pointer. */
export function openNodeMenu(editor, id, clientX, clientY) {
  const { graph, view } = editor;
  const node = graph.nodes.get(id);
  const ids = view.selection.size ? [...view.selection] : [id];
  const menu = document.querySelector("#menu");
  const mode = nodeMode(node);
  showActions(menu, clientX, clientY, [
    { id: "rename", label: "Rename…", run: () => {
      const title = prompt("node title", node.ui.title || graph.spec(node.type)?.title || node.type);
      if (title !== null) {
        node.ui.title = title.trim() || undefined;
        graph.changed({ renamed: [id] });
      }
    } },
    { id: "bypass", label: `${mode === "bypassed" ? "Stop bypassing" : "Bypass"} (Ctrl+B)`,
      run: () => toggleMode(graph, ids, "bypassed") },
    { id: "mute", label: `${mode === "muted" ? "Unmute" : "Mute"} (Ctrl+M)`, run: () => toggleMode(graph, ids, "muted") },
    { id: "collapse", label: `${node.ui.collapsed ? "Expand" : "Collapse"} (Alt+C)`, run: () => editor.toggleCollapsed() },
    { id: "pin", label: `${node.ui.pinned ? "Unpin" : "Pin"} (P)`, run: () => editor.togglePin() },
    { id: "color", label: "Colour…", run: () => showColors(graph, ids, menu, clientX, clientY) },
    { id: "duplicate", label: "Duplicate", run: () => {
      editor.copy();
      editor.lastPointer = [clientX + 30, clientY + 30];
      editor.paste();
    } },
    { id: "delete", label: `Delete ${ids.length > 1 ? `${ids.length} nodes` : "node"}`, run: () => editor.deleteSelected() },
  ]);
}

function showColors(graph, ids, menu, clientX, clientY) {
  const paint = (color) => {
    for (const nodeId of ids) {
      const node = graph.nodes.get(nodeId);
      if (!node) continue;
      if (color) node.ui.color = color;
      else delete node.ui.color;
    }
    graph.changed({ color: ids });
  };
  showActions(menu, clientX, clientY, [
    { id: "color-none", label: "no colour", run: () => paint(null) },
    ...Object.keys(NODE_COLORS).map((color) => ({ id: `color-${color}`, label: color.replace("_", " "), run: () => paint(color) })),
  ]);
}
