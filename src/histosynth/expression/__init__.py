"""Gene-expression conditioning (RNA-GAN): matrices, preparation, the β-VAE, profile evaluation."""
