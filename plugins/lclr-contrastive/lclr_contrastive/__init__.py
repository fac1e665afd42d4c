"""lclr-contrastive: the LatentCLR contrastive objective, as an lclr plugin
(``lclr_contrastive.objective``)."""
