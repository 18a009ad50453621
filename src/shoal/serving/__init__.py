"""Serving: inference replicas speaking the Open Inference Protocol v2 (a shell).

``protocol`` turns request bodies into numpy tensors and tensors into
responses (JSON and the binary tensor extension); ``loaders`` loads a model
file of one framework into something that maps input tensors to output
tensors; ``app`` is the replica's HTTP API; ``replica`` is the process
(``python -m shoal.serving.replica``) that the runtimes start per replica;
``router`` is the per-service router in front of the replicas.  The package
imports the domain, never the control core or a runtime.
"""
