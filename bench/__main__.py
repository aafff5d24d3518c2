"""``python -m bench``: runs the benchmark suite (see ``python -m bench --help``)."""

from bench.run import main

raise SystemExit(main())
