"""``python -m msslab.eval``: the same as ``msslab-eval`` (the code is in ``msslab.evaluate``)."""

from .evaluate import main

if __name__ == "__main__":
    main()
