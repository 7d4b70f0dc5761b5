"""Console mode: the `/tasks` commands in a terminal (the loop) and the rich renderer of views."""
