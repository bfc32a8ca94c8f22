"""python train.py [key=value ...]: the same as beholder train (beholder/train/cli.py), kept for scripts that call it."""

from beholder.train.cli import main

if __name__ == "__main__":
    main()
