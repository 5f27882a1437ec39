"""The commands behind ``histosynth <stage>`` (and so behind every workflow rule), one module
per stage: each function reads its inputs, calls the stage package, writes its outputs and logs
what it did. They sit above the stage packages (which never import them), so the stages depend
on each other in one direction only; histosynth.cli maps each command to one of them."""
