"""``python -m lrm_engine`` is the ``lrm`` command."""

from lrm_engine.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
