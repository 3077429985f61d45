"""The web server (aiohttp app factory, REST + websocket API) and the browser node editor."""
