"""What the model looks at across a project: its evidence described, clustered, and ranked by
how much it looks like a shortcut (``evidence``, ``clusters``)."""
from ml_backend.discovery.clusters import Cluster, StrategyClustering
from ml_backend.discovery.evidence import Descriptors, EvidenceDescriber

__all__ = ["Cluster", "Descriptors", "EvidenceDescriber", "StrategyClustering"]
