// Undo/redo by snapshots of the workflow document (graphs are small; snapshots are simple).

const LIMIT = 200;

export class UndoStack {
  constructor(snapshot) {
    this.past = [snapshot];
    this.future = [];
  }

  /** Record `snapshot` as the newest state (ignored when nothing changed). */
  record(snapshot) {
    if (this.past[this.past.length - 1] === snapshot) return;
    this.past.push(snapshot);
    if (this.past.length > LIMIT) this.past.shift();
    this.future = [];
  }

  undo() {
    if (this.past.length < 2) return null;
    this.future.push(this.past.pop());
    return this.past[this.past.length - 1];
  }

  redo() {
    const next = this.future.pop();
    if (next === undefined) return null;
    this.past.push(next);
    return next;
  }
}
