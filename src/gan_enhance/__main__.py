"""`python -m gan_enhance ...` is the `gan-enhance` command (so `torchrun ... -m gan_enhance train` works)."""

from gan_enhance.cli import main

main()
