// Reading the workflow that SaveImage embeds in a PNG's text chunks (tEXt, zTXt, iTXt).

import { editorWorkflowOf } from "./modes.js";

const SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** Text chunks of a PNG as {keyword: text}; throws when `buffer` is not a PNG. */
export async function pngTextChunks(buffer) {
  const bytes = new Uint8Array(buffer);
  if (!SIGNATURE.every((b, i) => bytes[i] === b)) throw new Error("not a PNG file");
  const view = new DataView(buffer);
  const latin1 = new TextDecoder("latin1");
  const utf8 = new TextDecoder("utf-8");
  const chunks = {};
  let offset = 8;
  while (offset + 8 <= bytes.length) {
    const length = view.getUint32(offset);
    const kind = latin1.decode(bytes.subarray(offset + 4, offset + 8));
    const body = bytes.subarray(offset + 8, offset + 8 + length);
    offset += 12 + length;
    if (kind === "IEND") break;
    if (kind !== "tEXt" && kind !== "zTXt" && kind !== "iTXt") continue;
    const zero = body.indexOf(0);
    const key = latin1.decode(body.subarray(0, zero));
    if (kind === "tEXt") {
      chunks[key] = latin1.decode(body.subarray(zero + 1));
    } else if (kind === "zTXt") {
      chunks[key] = latin1.decode(await inflate(body.subarray(zero + 2)));
    } else {
      const compressed = body[zero + 1] === 1;
      let rest = zero + 3;
      rest = body.indexOf(0, rest) + 1;  // language tag
      rest = body.indexOf(0, rest) + 1;  // translated keyword
      const text = body.subarray(rest);
      chunks[key] = utf8.decode(compressed ? await inflate(text) : text);
    }
  }
  return chunks;
}

/**
 * The workflow a PNG carries, best for editing first: the editor's whole document (muted and
 * bypassed nodes too, under EDITOR_KEY), our own document as it ran (any chunk), then
 * ComfyUI's UI graph (`workflow`: positions and widgets), then ComfyUI's API prompt (`prompt`).
 */
export async function workflowFromPng(buffer) {
  const chunks = await pngTextChunks(buffer);
  const parsed = {};
  for (const [key, text] of Object.entries(chunks)) {
    if (key !== "workflow" && key !== "prompt" && !text.trimStart().startsWith("{")) continue;
    try { parsed[key] = JSON.parse(text); } catch { /* not JSON: not a workflow */ }
  }
  const editor = editorWorkflowOf({ extra_pnginfo: parsed });
  if (editor) return editor;
  const ours = Object.values(parsed).find((d) => d && typeof d === "object" && d.nodes && !Array.isArray(d.nodes) && "version" in d);
  if (ours) return ours;
  if (parsed.workflow && Array.isArray(parsed.workflow.nodes)) return parsed.workflow;
  if (parsed.prompt && typeof parsed.prompt === "object") return parsed.prompt;
  if (parsed.workflow) return parsed.workflow;
  const keys = Object.keys(chunks);
  throw new Error(`this PNG carries no workflow (text chunks: ${keys.length ? keys.join(", ") : "none"}); ` +
                  "only images written by SaveImage (ours or ComfyUI's) embed one");
}
