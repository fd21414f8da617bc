"""Threshold attention (TDA, TRA, ReLA): the exact PyTorch reference, the Triton and Gluon kernels, their launcher,
autograd function, custom ops and drop-in wrappers."""
