"""StyleGAN2 for lclr, in plain PyTorch.

``model`` holds the network (checkpoint-compatible with the common PyTorch
port), ``loading`` reads and writes checkpoints safely, ``generator`` wraps
the network as an lclr Generator, and ``plugin`` registers ``stylegan2``.
Nothing heavy is imported here, so ``lclr --help`` stays fast.
"""
