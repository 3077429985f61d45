// Auto Queue, as ComfyUI's: "instant" queues the workflow again whenever the server's queue
// runs empty; "change" queues it when the workflow was edited and the queue is empty (an edit
// made while prompts run waits for them). Changes the queueing itself makes (seeds set to
// randomize/increment) do not count as edits.

export class AutoQueue {
  constructor(editor, select) {
    this.editor = editor;
    this.select = select;
    this.remaining = 0;
    this.dirty = false;
    this.inFlight = false;
    this.statuses = 0;
    select.addEventListener("change", () => {
      this.dirty = false;
      this.maybeQueue();
    });
  }

  get mode() {
    return this.select.value;
  }

  /** The server's queue size, from each `status` message. */
  status(remaining) {
    this.remaining = remaining;
    this.statuses += 1;
    this.maybeQueue();
  }

  /** A user edit of the workflow (not one made by queueing). */
  edited() {
    if (this.mode !== "change" || this.editor.queuing) return;
    this.dirty = true;
    this.maybeQueue();
  }

  async maybeQueue() {
    if (this.inFlight || this.remaining > 0 || this.mode === "off") return;
    if (this.mode === "change" && !this.dirty) return;
    this.inFlight = true;
    this.dirty = false;
    const seen = this.statuses;
    try {
      await this.editor.queue();
    } finally {
      this.inFlight = false;
    }
    // The server's status messages and the reply to /prompt arrive in either order: if none came
    // while queueing, the prompt's own status is still to come; if some did, the latest is current
    // (a fast, cached prompt may already have finished: queue again now).
    if (this.statuses === seen) this.remaining = Math.max(this.remaining, 1);
    else this.maybeQueue();
  }
}
