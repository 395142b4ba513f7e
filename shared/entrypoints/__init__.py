"""How the product is reached: SCF handlers, the HTTP API and status page, the CLI, the local server."""
