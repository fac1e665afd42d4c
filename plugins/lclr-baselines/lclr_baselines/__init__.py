"""lclr-baselines: GANSpace and SeFa directions, fitted in closed form."""
