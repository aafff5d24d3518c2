"""``python -m bench``: runs the benchmark suite (see ``python -m bench --help``);
``python -m bench --accelerator-check`` runs :mod:`bench.accelerator` instead and
``python -m bench --keras3-deepface`` runs :mod:`bench.keras3_deepface` (DeepFace in
Keras 3 with jlocalconv's layers against tf_keras; the other options are its own)."""

import sys

if "--accelerator-check" in sys.argv[1:]:
    from bench.accelerator import main
elif "--keras3-deepface" in sys.argv[1:]:
    sys.argv.remove("--keras3-deepface")
    from bench.keras3_deepface import main
else:
    from bench.run import main

raise SystemExit(main())
