"""``subnetwork``: Neural Subnetwork Ensembles (Whitaker): children sampled, perturbed and tuned from one parent."""

from ensemblekit.methods.subnetwork.ensemble import SubnetworkEnsemble
from ensemblekit.methods.subnetwork.method import Subnetwork
from ensemblekit.methods.subnetwork.options import SubnetworkOptions

__all__ = ["Subnetwork", "SubnetworkEnsemble", "SubnetworkOptions"]
