"""Runtime adapters behind the control ports: local processes, Kubernetes, simulation."""
