"""Function-preserving architecture transforms (Net2Net, Chen et al. 2016) and MotherNets' constructions.

* :mod:`.channel_map`: Net2WiderNet's unit maps; :mod:`.ops`: layer-level weight transfers (widen, deepen,
  enlarge kernels);
* :mod:`.hatch`: whole-network hatching for ResNets, pre-activation ResNets/WRNs, VGGs and DenseNets, and the
  post-hatching noise;
* :mod:`.mother`: the MotherNet spec of a cluster (per-position minima); :mod:`.clustering`: the g clusters.
"""

from ensemblekit.models.transforms.channel_map import ChannelMap
from ensemblekit.models.transforms.clustering import cluster_architectures
from ensemblekit.models.transforms.hatch import hatch, perturb_, refine_identity_bns
from ensemblekit.models.transforms.mother import check_hatchable, mother_spec, parameter_share, spec_parameters
from ensemblekit.models.transforms.ops import (
    enlarge_kernel,
    identity_bn_,
    identity_conv_,
    map_weight,
    transfer_bn,
    transfer_conv,
    transfer_linear,
)

__all__ = [
    "ChannelMap",
    "check_hatchable",
    "cluster_architectures",
    "enlarge_kernel",
    "hatch",
    "identity_bn_",
    "identity_conv_",
    "map_weight",
    "mother_spec",
    "parameter_share",
    "perturb_",
    "refine_identity_bns",
    "spec_parameters",
    "transfer_bn",
    "transfer_conv",
    "transfer_linear",
]
