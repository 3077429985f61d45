"""ComfyUI's ``comfy_extras``: its node modules are ComfyUI's own code and are not offered;
packs importing one fail to load with a message naming it."""
