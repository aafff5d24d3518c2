"""``python -m bench``: runs the benchmark suite (see ``python -m bench --help``);
``python -m bench --accelerator-check`` runs :mod:`bench.accelerator` instead."""

import sys

if "--accelerator-check" in sys.argv[1:]:
    from bench.accelerator import main
else:
    from bench.run import main

raise SystemExit(main())
