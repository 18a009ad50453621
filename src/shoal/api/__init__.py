"""The control plane's REST API and the one HTTP client the CLI uses."""
