"""The engine: workflow format and schema, node API, registry and plugins, validation,
caching scheduler, queue and events. Standard library + networkx + jsonschema only."""
