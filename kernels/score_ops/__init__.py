"""What the one-view score ops share: sigmoid attention (kernels/sigmoid/), softpick and softmax with a sink logit
(kernels/softpick/, whose row-normalised kernels also serve kernels/sink_softmax/).

launch.py      the host side: the input check, the tile type, launches that fall back to the next tile, dQ's finish
triton_tiles.py  Triton device helpers: tile loads, block orders, which blocks a causal map visits, dQ's finish kernel
blocked.py     the exact PyTorch references' machinery (query-row blocks, a rule per map)
gluon.py       the host side of the Gluon kernels for Hopper: whether inputs take them, their launches, the hand-over
gluon_backward.py, gluon_forward.py   the Gluon kernels, one for all three ops, the op a constexpr MODE

The package imports nothing at import time, so an op folder can import one module of it without the others (the
Gluon modules need a Triton with Gluon: kernels/gluon_support.py). README.md in this folder says how the pieces
fit together.
"""
