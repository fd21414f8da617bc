"""The options of threshold attention that are plain values (SPEC §1), written once.

λ and β are tensors (one per head, with gradients) and travel beside this object. The launchers, the autograd
function, the input checks and the exact reference take a ``ThresholdOptions``; the custom ops' schemas list its
fields (custom_ops.py builds them from it), and the public functions ``threshold_attention`` and
``threshold_attention_weights`` (``kernels.threshold``) take them as keywords. A new option is a field here and a
keyword there, then the kernels that use it.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class ThresholdOptions:
    """p: power of the rectified score, real >= 1 (the kernels take fast paths for 1 and 2).
    normalize: L2-normalise q and k before the dot product (TDA, TRA); False for ReLA.
    scale: factor on the (normalised or raw) dot product before the threshold (1 for TDA/TRA, 1/sqrt(d) for ReLA).
    causal: keys after each query's position are masked."""

    p: float = 2.0
    normalize: bool = True
    scale: float = 1.0
    causal: bool = True

    def flat(self) -> tuple:
        """The fields' values in their order (the custom ops take them as plain arguments)."""
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))
