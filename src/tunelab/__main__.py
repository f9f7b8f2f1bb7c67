"""`python -m tunelab ...`: the CLI, for launchers that start modules (`torchrun -m tunelab train ...`,
`accelerate launch -m tunelab train ...`)."""

from tunelab.cli.main import main

main()
