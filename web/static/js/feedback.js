// Run feedback from the websocket events: the toolbar's progress (nodes done, the sampler's
// steps as a percentage, an ETA from the step rate) and each node's time after a run.

function formatSeconds(seconds) {
  if (!Number.isFinite(seconds)) return "";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

export class RunFeedback {
  /** `nodeCount()` says how many nodes the running prompt has; `describe(id)` names a node. */
  constructor(root, { nodeCount, describe, onTimes }) {
    this.bar = root.querySelector("#run-progress-bar");
    this.text = root.querySelector("#run-progress-text");
    this.nodeCount = nodeCount;
    this.describe = describe;
    this.onTimes = onTimes;  // (Map id -> {seconds} | {cached: true}) after each change
    this.reset();
  }

  reset() {
    this.times = new Map();
    this.current = null;
    this.started = null;
    this.total = 0;
  }

  start() {
    this.reset();
    this.runStarted = performance.now();
    this.total = this.nodeCount();
    this.show(0, "starting…");
    this.onTimes(this.times);
  }

  cached(ids) {
    for (const id of ids) this.times.set(String(id), { cached: true });
    this.onTimes(this.times);
    this.showNodes();
  }

  /** `executing` a node: the previous one finished now. */
  executing(id) {
    const now = performance.now();
    if (this.current && !this.times.has(this.current)) {
      this.times.set(this.current, { seconds: (now - this.nodeStarted) / 1000 });
      this.onTimes(this.times);
    }
    this.current = id === null ? null : String(id);
    this.nodeStarted = now;
    this.steps = null;
    this.showNodes();
  }

  progress(id, value, max) {
    const now = performance.now();
    if (!this.steps || this.steps.node !== String(id) || value < this.steps.value) {
      this.steps = { node: String(id), first: value, at: now, value };
    }
    this.steps.value = value;
    const done = value - this.steps.first;
    const rate = done > 0 ? (now - this.steps.at) / 1000 / done : NaN;  // seconds per step
    const eta = rate * (max - value);
    const percent = max ? Math.round((100 * value) / max) : 0;
    const name = this.describe(String(id));
    this.show(percent / 100, `${name} ${value}/${max} · ${percent}%${Number.isFinite(eta) ? ` · ETA ${formatSeconds(eta)}` : ""}`);
  }

  showNodes() {
    const done = this.times.size;
    const fraction = this.total ? Math.min(1, done / this.total) : 0;
    const name = this.current ? this.describe(this.current) : "";
    this.show(fraction, `${done}/${this.total} nodes · ${Math.round(fraction * 100)}%${name ? ` · ${name}` : ""}`);
  }

  /** The run ended: `outcome` is "done", "failed" or "interrupted". */
  finish(outcome) {
    if (outcome === "done" && this.current && !this.times.has(this.current)) {
      this.times.set(this.current, { seconds: (performance.now() - this.nodeStarted) / 1000 });
      this.onTimes(this.times);
    }
    const seconds = this.runStarted ? (performance.now() - this.runStarted) / 1000 : NaN;
    const ran = [...this.times.values()].filter((t) => !t.cached).length;
    const cached = this.times.size - ran;
    this.show(outcome === "done" ? 1 : 0, `${outcome} in ${formatSeconds(seconds)} · ${ran} run, ${cached} cached`);
    this.current = null;
  }

  show(fraction, text) {
    this.bar.style.width = `${Math.round(fraction * 100)}%`;
    this.text.textContent = text;
    this.bar.parentElement.dataset.percent = String(Math.round(fraction * 100));
  }
}

export { formatSeconds };
