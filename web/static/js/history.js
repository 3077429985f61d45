// Undo/redo by snapshots of the workflow document (graphs are small; snapshots are simple).

const LIMIT = 200;

export class UndoStack {
  constructor(snapshot) {
    this.past = [snapshot];
    this.future = [];
    this.lastKey = null;
  }

  /**
   * Record `snapshot` as the newest state (ignored when nothing changed). Consecutive
   * changes with the same `key` (typing into one widget) merge into one undo step.
   */
  record(snapshot, key = null) {
    if (this.past[this.past.length - 1] === snapshot) return;
    if (key !== null && key === this.lastKey && this.past.length > 1) {
      this.past[this.past.length - 1] = snapshot;
    } else {
      this.past.push(snapshot);
      if (this.past.length > LIMIT) this.past.shift();
    }
    this.lastKey = key;
    this.future = [];
  }

  undo() {
    this.lastKey = null;
    if (this.past.length < 2) return null;
    this.future.push(this.past.pop());
    return this.past[this.past.length - 1];
  }

  redo() {
    this.lastKey = null;
    const next = this.future.pop();
    if (next === undefined) return null;
    this.past.push(next);
    return next;
  }
}
