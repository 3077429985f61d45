"""ComfyUI's ``comfy_execution`` as far as packs reach into it: the graph builder for node
expansion and ExecutionBlocker (:mod:`.graph_utils`, :mod:`.graph`)."""
