"""The application layer: what a request to Shoal means, whoever carries it.

Applying manifests (parse, authorise, check, tenancy rules, one all-or-nothing
write, events) and reading jobs, tenants, nodes, events and logs on behalf of
a caller live here once.  The REST API, ``shoal run`` and a Kubernetes
admission webhook are thin shells over it; the runtime plugs its store and
its per-job files in through the protocols of ``shoal.app.ports``.  Nothing
here touches the filesystem, the network or a clock of its own.
"""
