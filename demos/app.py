"""Launch the baseline-vs-mitigated demo: ``python demos/app.py [--model testbed|tiny|ID] [--port 7860]``.

The same command as ``vlmfix demo``; everything lives in :mod:`vlmfix.demo`.
"""

from vlmfix.demo.cli import demo

if __name__ == "__main__":
    demo(prog_name="demos/app.py")
