"""Metrics (PSNR/SSIM as papers report them, FID/KID with the standard Inception), baselines, the stage."""
