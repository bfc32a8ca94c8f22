"""python predict.py [key=value ...]: the same as beholder predict (beholder/predict/cli.py), kept for scripts that call it."""

from beholder.predict.cli import main

if __name__ == "__main__":
    main()
