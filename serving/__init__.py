"""serving: the HTTP app (later issues), experiment assignment, and the clickloop CLI."""
