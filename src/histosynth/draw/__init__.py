"""``histosynth draw``: a local web page to paint label maps and get synthetic tiles back."""
