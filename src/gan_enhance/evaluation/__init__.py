"""Metrics (PSNR/SSIM as papers report them, FID/KID with the standard Inception), test sets, one evaluation per
task kind, reports, and the evaluate stage."""
