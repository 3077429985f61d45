// The image lightbox: a click on an output image (on a node or in the gallery) shows it large;
// arrows step through the images on screen, Escape or a click outside closes it.

export class Lightbox {
  /** `onLoadWorkflow(url)`, when given, opens the workflow the image carries in the editor. */
  constructor(root, onLoadWorkflow = null) {
    this.root = root;
    this.onLoadWorkflow = onLoadWorkflow;
    this.urls = [];
    this.index = 0;
    root.addEventListener("click", (event) => { if (event.target === root) this.close(); });
    window.addEventListener("keydown", (event) => {
      if (root.hidden) return;
      if (event.key === "Escape") this.close();
      else if (event.key === "ArrowRight") this.step(1);
      else if (event.key === "ArrowLeft") this.step(-1);
      else return;
      event.preventDefault();
      event.stopImmediatePropagation();
    }, true);
  }

  /** Show `url` among `urls` (what the arrows step through). */
  open(url, urls = [url]) {
    this.urls = urls.includes(url) ? urls : [url, ...urls];
    this.index = this.urls.indexOf(url);
    this.render();
    this.root.hidden = false;
  }

  step(delta) {
    if (!this.urls.length) return;
    this.index = (this.index + delta + this.urls.length) % this.urls.length;
    this.render();
  }

  render() {
    const url = this.urls[this.index];
    const image = Object.assign(document.createElement("img"), { src: url, alt: "output image" });
    const bar = document.createElement("div");
    bar.className = "lightbox-bar";
    const name = new URLSearchParams(url.split("?")[1] ?? "").get("filename") ?? "";
    const label = Object.assign(document.createElement("span"), {
      textContent: `${name}  ${this.index + 1}/${this.urls.length}` });
    const open = Object.assign(document.createElement("a"), { href: url, target: "_blank", textContent: "open" });
    const close = Object.assign(document.createElement("button"), { textContent: "close (Esc)" });
    close.addEventListener("click", () => this.close());
    bar.append(label, open);
    if (this.onLoadWorkflow) {
      const load = Object.assign(document.createElement("button"), {
        className: "lightbox-load", textContent: "load its workflow", title: "open the workflow saved in this image" });
      load.addEventListener("click", () => { this.close(); this.onLoadWorkflow(url); });
      bar.append(load);
    }
    bar.append(close);
    this.root.replaceChildren(image, bar);
  }

  close() {
    this.root.hidden = true;
    this.root.replaceChildren();
  }
}
