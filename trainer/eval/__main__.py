"""`python -m trainer.eval`: evaluate a checkpoint or a model folder on the held-out sets (`trainer.eval.cli`)."""

from trainer.eval.cli import main

raise SystemExit(main())
