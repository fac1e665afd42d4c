"""BigGAN-deep for lclr, in plain PyTorch.

``model`` holds the network (it loads the weights of the
``pytorch-pretrained-biggan`` layout), ``loading`` reads a weights folder
safely, ``classes`` looks ImageNet classes up by index or name, ``generator``
wraps the network as an lclr Generator, and ``plugin`` registers ``biggan``.
Nothing heavy is imported here, so ``lclr --help`` stays fast.
"""
