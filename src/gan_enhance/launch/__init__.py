"""Launching training beyond this machine: Kubernetes manifests for a GPU work pool and multi-node PyTorchJobs."""
