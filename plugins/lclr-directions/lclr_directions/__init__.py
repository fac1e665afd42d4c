"""lclr-directions: the global, linear and nonlinear direction models of
LatentCLR, as an lclr plugin (classes in ``lclr_directions.models``)."""
