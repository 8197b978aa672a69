"""``python -m gptvariants ...`` is ``gptv ...`` (torchrun: ``torchrun ... -m gptvariants train ...``)."""

from .apps.cli.main import main

raise SystemExit(main())
