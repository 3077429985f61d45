// The minimap: the whole workflow drawn small in the canvas's corner with the visible part
// outlined; a click or drag on it moves the view there. Shown while the "minimap" setting is on.

const WIDTH = 200, HEIGHT = 130, MARGIN = 40;
const CORNER_GAP = 10;  // px between the map and the canvas's edges (style.css: #minimap)

export class Minimap {
  constructor(canvasElement, view, settings) {
    this.view = view;
    this.graph = view.graph;
    this.settings = settings;
    this.element = Object.assign(document.createElement("canvas"), { id: "minimap", width: WIDTH, height: HEIGHT,
                                                                     title: "minimap: click or drag to move the view" });
    canvasElement.append(this.element);
    this.frame = null;
    this.mapping = null;
    this.element.addEventListener("pointerdown", (event) => {
      event.stopPropagation();
      this.element.setPointerCapture(event.pointerId);
      this.dragging = true;
      this.centreOn(event);
    });
    this.element.addEventListener("pointermove", (event) => { if (this.dragging) this.centreOn(event); });
    this.element.addEventListener("pointerup", () => {
      this.dragging = false;
      this.graph.changed({ view: true }, { rerender: false, record: false });
    });
    this.element.addEventListener("dblclick", (event) => event.stopPropagation());
    this.element.addEventListener("wheel", (event) => event.stopPropagation());
    settings.addEventListener("change", () => this.schedule());
  }

  /** The canvas corner it covers, with its margin ({width, height}), or null when hidden. */
  corner() {
    const shown = this.settings.get("minimap") && this.graph.nodes.size > 0;
    return shown ? { width: WIDTH + 2 * CORNER_GAP, height: HEIGHT + 2 * CORNER_GAP } : null;
  }

  /** Redraw on the next frame (many changes in one frame draw once). */
  schedule() {
    if (this.frame !== null) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = null;
      this.draw();
    });
  }

  /** Node rectangles in world coordinates, from the rendered elements. */
  boxes() {
    return [...this.view.world.querySelectorAll(".node")].map((element) => ({
      id: element.dataset.nodeId, x: element.offsetLeft, y: element.offsetTop,
      w: element.offsetWidth, h: element.offsetHeight,
      selected: element.classList.contains("selected"), color: getComputedStyle(element).getPropertyValue("--node-color").trim(),
    }));
  }

  draw() {
    const show = this.settings.get("minimap") && this.graph.nodes.size > 0;
    this.element.hidden = !show;
    if (!show) return;
    const rect = this.view.canvas.getBoundingClientRect();
    const { x, y, scale } = this.graph.view;
    const visible = { x: -x / scale, y: -y / scale, w: rect.width / scale, h: rect.height / scale };
    const boxes = this.boxes();
    const left = Math.min(visible.x, ...boxes.map((b) => b.x)) - MARGIN;
    const top = Math.min(visible.y, ...boxes.map((b) => b.y)) - MARGIN;
    const right = Math.max(visible.x + visible.w, ...boxes.map((b) => b.x + b.w)) + MARGIN;
    const bottom = Math.max(visible.y + visible.h, ...boxes.map((b) => b.y + b.h)) + MARGIN;
    const k = Math.min(WIDTH / (right - left), HEIGHT / (bottom - top));
    const ox = (WIDTH - (right - left) * k) / 2, oy = (HEIGHT - (bottom - top) * k) / 2;
    this.mapping = { left, top, k, ox, oy };
    const context = this.element.getContext("2d");
    context.clearRect(0, 0, WIDTH, HEIGHT);
    context.fillStyle = "#16171acc";
    context.fillRect(0, 0, WIDTH, HEIGHT);
    const map = (px, py) => [ox + (px - left) * k, oy + (py - top) * k];
    for (const box of boxes) {
      const [bx, by] = map(box.x, box.y);
      context.fillStyle = box.selected ? "#4f9dff" : (box.color || "#6b7078");
      context.fillRect(bx, by, Math.max(2, box.w * k), Math.max(2, box.h * k));
    }
    const [vx, vy] = map(visible.x, visible.y);
    context.strokeStyle = "#e4e6ea";
    context.lineWidth = 1;
    context.strokeRect(vx + 0.5, vy + 0.5, visible.w * k, visible.h * k);
    this.element.dataset.visible = [visible.x, visible.y, visible.w, visible.h].map(Math.round).join(",");
  }

  /** Move the view so that the world point under the pointer is in the middle. */
  centreOn(event) {
    if (!this.mapping) return;
    const bounds = this.element.getBoundingClientRect();
    const { left, top, k, ox, oy } = this.mapping;
    const wx = left + (event.clientX - bounds.left - ox) / k, wy = top + (event.clientY - bounds.top - oy) / k;
    const rect = this.view.canvas.getBoundingClientRect();
    const view = this.graph.view;
    view.x = Math.round(rect.width / 2 - wx * view.scale);
    view.y = Math.round(rect.height / 2 - wy * view.scale);
    this.view.applyTransform();
  }
}
