// The server's websocket messages (ComfyUI's: status, execution_start, execution_cached,
// executing, progress, executed, execution_error, execution_interrupted) applied to the editor.
// Results of a prompt queued from another workflow tab do not land on this canvas: its
// images are kept for that tab (shown when it is opened again) and in the gallery.

/** Apply one message to `editor` (main.js's Editor). */
export function handleMessage(editor, type, data) {
  const { view, feedback } = editor;
  const here = editor.showsPrompt(data?.prompt_id ?? editor.runningPrompt);
  if (type === "status") {
    document.querySelector("#queue-size").textContent = `queue: ${data.status.exec_info.queue_remaining}`;
    editor.panel.refresh();
    editor.autoQueue.status(data.status.exec_info.queue_remaining);
  } else if (type === "execution_start") {
    editor.runningPrompt = data.prompt_id;
    if (editor.showsPrompt(data.prompt_id)) view.clearRunState();
    editor.outcome = null;
    feedback.start();
  } else if (type === "execution_cached") {
    feedback.cached(data.nodes ?? []);
  } else if (type === "executing") {
    if (here || data.node === null) view.setRunning(here ? data.node : null);
    if (data.node === null) feedback.finish(editor.outcome ?? "done");
    else feedback.executing(data.node);
  } else if (type === "progress") {
    if (here) view.setProgress(data.node, data.value, data.max);
    feedback.progress(data.node, data.value, data.max);
  } else if (type === "executed") {
    if (here) view.setOutput(data.node, data.output);
    else editor.tabs.keepOutput(editor.promptTabs.get(data.prompt_id), data.node, data.output);
    for (const image of data.output?.images ?? []) editor.panel.addImage(image);
  } else if (type === "execution_error") {
    view.stopRunning();
    editor.outcome = "failed";
    const message = `${data.exception_type ? `${data.exception_type}: ` : ""}${data.exception_message}`;
    if (data.node_id && here) view.setErrors({ [data.node_id]: [{ message }] });
    editor.notify(`node ${data.node_id ?? "?"} failed: ${message}`, "error");
  } else if (type === "execution_interrupted") {
    view.stopRunning();
    editor.outcome = "interrupted";
    editor.notify("interrupted");
  }
}
